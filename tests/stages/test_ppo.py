"""PPO on a tiny model, in-process: the score rises on a verifiable reward, beta holds a policy with
no reward at the reference, resume continues exactly, LoRA's reference, the artifact and config checks."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from rlft.errors import ConfigError
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import ppo
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics

REWARDS = '''
def uppercase_share(prompts, completions, **fields):
    """The share of a completion's letters that are upper case: a dense, verifiable reward."""
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        letters = [ch for ch in text if ch.isalpha()]
        out.append(sum(ch.isupper() for ch in letters) / len(letters) if letters else 0.0)
    return out


def zero(prompts, completions, **fields):
    return [0.0] * len(prompts)
'''


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def make(
    tmp_path: Path, tiny_model: Path, work: str = "work", **overrides
) -> tuple[ppo.PPOStage, StageContext]:
    (tmp_path / "rewards.py").write_text(REWARDS)
    spec = {
        "name": "ppo",
        "kind": "ppo",
        "model": {"path": str(tiny_model)},
        "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 256},
        "reward": {"function": "rewards.py:uppercase_share"},
        "steps": 4,
        "rollout_batch_size": 16,
        "minibatch_size": 8,
        "max_new_tokens": 6,
        "temperature": 1.0,
        "learning_rate": 3e-3,
        "sample_every": 2,
        **overrides,
    }
    cfg = ppo.PPOStage.model_validate(spec)
    work_dir = tmp_path / work
    (work_dir / "artifact").mkdir(parents=True, exist_ok=True)
    return cfg, stage_context(tmp_path, work_dir)


def logged(ctx: StageContext, key: str) -> list[float]:
    return [m[key] for m in read_metrics(ctx.metrics_path) if key in m]


def test_score_rises_on_a_verifiable_reward(tmp_path, tiny_model):
    """Upper-case letters earn reward: over a few dozen updates the mean score rises well above its start."""
    cfg, ctx = make(tmp_path, tiny_model, steps=30, rollout_batch_size=32, sample_every=10)
    result = ppo.run(cfg, ctx)
    scores = logged(ctx, "ppo/score")
    assert len(scores) == 30 and all(math.isfinite(s) for s in scores)
    first, last = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert last > first + 0.25, scores
    for key in (
        "ppo/kl",
        "ppo/entropy",
        "ppo/clipfrac",
        "ppo/approx_kl",
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/explained_variance",
        "ppo/response_length",
        "ppo/beta",
        "perf/seconds_per_step",
        "perf/tokens_per_second",
        "perf/flops_per_step",
        "perf/mfu",
        "perf/flops/sample",
        "perf/flops/train",
        "perf/seconds/train",
        "perf/mfu/train",
    ):
        assert len(logged(ctx, key)) == 30, key
    assert all(0 < m < 1.5 for m in logged(ctx, "perf/mfu"))  # a share of the timed matmul rate
    assert result.metrics["kl"] == logged(ctx, "ppo/kl")[-1] and result.metrics["train/global_step"] == 30
    samples = [json.loads(line) for line in (ctx.artifact_dir / "ppo_samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {1, 10, 20, 30} and {"prompt", "completion", "score"} <= samples[
        0
    ].keys()

    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()  # a plain HF folder
    assert all(not torch.equal(before[k], after[k]) for k in before)


def exact_kl(policy_dir: Path, reference_dir: Path) -> float:
    """Mean per-token KL(policy || reference) over the whole vocabulary, on fixed token sequences."""
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 200, (32, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp = AutoModelForCausalLM.from_pretrained(policy_dir)(ids).logits.log_softmax(-1)
        logq = AutoModelForCausalLM.from_pretrained(reference_dir)(ids).logits.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean().item()


def test_beta_holds_a_policy_without_reward_at_the_reference(tmp_path, tiny_model):
    """Zero score: the only reward is -beta * KL. A policy starting at the reference stays there; one
    starting away from it is pulled back, which without beta does not happen."""
    from transformers import AutoModelForCausalLM

    zero = {"reward": {"function": "rewards.py:zero"}, "steps": 10, "learning_rate": 3e-3}
    cfg, ctx = make(tmp_path, tiny_model, work="at", beta=1.0, **zero)
    ppo.run(cfg, ctx)
    assert logged(ctx, "ppo/kl")[0] == 0.0  # step 1: the policy is the reference
    assert exact_kl(ctx.artifact_dir, tiny_model) < 0.06

    moved = tmp_path / "moved"  # the tiny model with its (tied) output embeddings perturbed
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.add_(
            0.1 * torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
        )
    model.save_pretrained(moved)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            (moved / name).write_bytes((tiny_model / name).read_bytes())
    start = exact_kl(moved, tiny_model)
    after = {}
    for beta in (0.0, 1.0):
        cfg, ctx = make(
            tmp_path, moved, work=f"beta{beta}", beta=beta, reference={"path": str(tiny_model)}, **zero
        )
        ppo.run(cfg, ctx)
        after[beta] = exact_kl(ctx.artifact_dir, tiny_model)
    assert after[1.0] < 0.85 * start and after[1.0] < 0.85 * after[0.0], (start, after)


@pytest.mark.parametrize("design", ["separate", "shared", "lora"])
def test_resume_continues_from_the_saved_step(tmp_path, tiny_model, design):
    """A run resumed from checkpoint-2 goes on exactly as the uninterrupted run: same steps, same
    beta (the adaptive controller's state), same scores and losses (RNG, optimizer, prompt position),
    whatever the critic's design (a separate model, a value head on the policy, LoRA adapters)."""
    settings = {"steps": 4, "save_steps": 2, "adaptive_kl": {"target": 0.01, "horizon": 50}, "beta": 0.1}
    settings["critic_design"] = design
    cfg, ctx = make(tmp_path, tiny_model, **settings)
    ppo.run(cfg, ctx)
    checkpoint = ctx.checkpoint_dir / "checkpoint-2"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["kl_controller"]["kind"] == "adaptive"

    cfg2, ctx2 = make(tmp_path, tiny_model, work="resumed", **settings)
    ctx2.resume_from = str(checkpoint)
    result = ppo.run(cfg2, ctx2)
    first, second = read_metrics(ctx.metrics_path), read_metrics(ctx2.metrics_path)
    assert [m["step"] for m in second if "ppo/score" in m] == [3, 4]
    betas = logged(ctx, "ppo/beta")
    assert logged(ctx2, "ppo/beta") == betas[2:] and betas[2] != 0.1  # beta had moved, and was restored
    for key in ("ppo/score", "ppo/kl", "ppo/loss", "ppo/value_loss"):
        assert logged(ctx2, key) == pytest.approx(logged(ctx, key)[2:], rel=1e-5), key
    assert result.rank["losses"] == pytest.approx([m["ppo/loss"] for m in first if "ppo/loss" in m], rel=1e-5)


@pytest.mark.parametrize("design", ["separate", "shared"])
def test_lora_policy_uses_the_adapter_disabled_reference_and_saves_merged(tmp_path, tiny_model, design):
    """With a shared critic the value head reads the LoRA policy's hidden states; the reference is still
    the same trunk with the adapters off, and the saved policy has no value head."""
    lora = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    cfg, ctx = make(tmp_path, tiny_model, tuning=lora, steps=2, critic_design=design)
    result = ppo.run(cfg, ctx)
    assert result.info["reference"] == "the starting model (the policy with its adapters disabled)"
    assert logged(ctx, "ppo/kl")[0] == 0.0  # LoRA starts at B = 0: the policy is its reference
    params = result.info["parameters"]
    assert 0 < params["trainable"] < params["total"]
    assert result.info["saved"]["merged"] and (ctx.artifact_dir / "adapter").is_dir()
    if design == "shared":
        assert result.info["critic"].startswith("a value head on the policy's own forward")
        # one trunk pass for policy and critic: the no-grad passes cost two trunks (policy, reference), not three
        forward, sample = logged(ctx, "perf/flops/forward")[-1], logged(ctx, "perf/flops/sample")[-1]
        assert 0 < sample < forward


@pytest.mark.parametrize(
    ("method", "design"),
    [("prompt_tuning", "separate"), ("prefix_tuning", "separate"), ("prompt_tuning", "shared")],
)
def test_prompt_methods_sample_and_train_only_the_prompt(tmp_path, tiny_model, method, design):
    """A prompt-tuned policy samples through rlft's generate (peft's is wrong under transformers 5):
    only the prompt changes, the reference is a frozen copy of the start, the prompt is kept. A shared
    critic reads the values after the virtual tokens."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlft.models.loading import ResolvedModel, load_causal_lm
    from rlft.models.tuning import PrefixTuning, PromptTuning, apply_tuning

    tuning = {"method": method, "num_virtual_tokens": 4, "init_text": "shout"}
    cfg, ctx = make(tmp_path, tiny_model, tuning=tuning, steps=3, learning_rate=3e-2, critic_design=design)
    result = ppo.run(cfg, ctx)
    assert result.info["reference"] == "the starting model (a frozen copy)"
    assert result.info["saved"] == {"merged": False, "adapter": "adapter/", "peft": method}
    assert all(math.isfinite(x) for key in ("ppo/kl", "ppo/policy_loss") for x in logged(ctx, key))
    assert 0 < result.info["parameters"]["trainable"] < 10_000
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    root = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    assert all(torch.equal(base[k], root[k]) for k in base)  # the base is untouched
    policy = load_causal_lm(ResolvedModel(str(ctx.artifact_dir)))
    assert isinstance(policy, PeftModel)
    config = {"prompt_tuning": PromptTuning, "prefix_tuning": PrefixTuning}[method](**tuning)
    start = apply_tuning(
        load_causal_lm(ResolvedModel(str(tiny_model))),
        config,
        tokenizer=AutoTokenizer.from_pretrained(tiny_model),
    )
    weight = "prompt_encoder.default.embedding.weight"
    assert not torch.allclose(start.state_dict()[weight], policy.state_dict()[weight], atol=1e-4)


@pytest.mark.parametrize("prompt", [False, True], ids=["plain", "prompt-tuned"])
def test_critic_from_a_reward_model_is_put_on_the_rewards_scale(tmp_path, tiny_model, prompt):
    from transformers import AutoModelForSequenceClassification

    from rlft.models.tuning import PromptTuning, apply_tuning, save_model

    rm_dir = tmp_path / "rm"
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    rm.config.pad_token_id = 0
    if prompt:  # a prompt-tuned reward stage's artifact: base + trained head at the root, prompt in adapter/
        rm = apply_tuning(rm, PromptTuning(num_virtual_tokens=4), task_type="SEQ_CLS")
        save_model(rm, _tokenizer(tiny_model), rm_dir)
    else:
        rm.save_pretrained(rm_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            (rm_dir / name).write_bytes((tiny_model / name).read_bytes())
    (rm_dir / "reward_stats.json").write_text('{"mean": 1.0, "std": 4.0, "n": 10}')
    reward = {
        "sum": [{"path": str(rm_dir), "normalize": True, "weight": 2.0}, {"function": "rewards.py:zero"}]
    }
    cfg, ctx = make(tmp_path, tiny_model, reward=reward, steps=1)
    logged = []
    ctx.log = logged.append
    critic, what = ppo.load_critic(cfg, ctx, tokenizer=_tokenizer(tiny_model))
    assert "reward head" in what and "0.5 * score + -0.5" in what  # 2 * (r - 1) / 4
    assert any("without its learned prompt" in line for line in logged) is prompt
    cfg, ctx = make(tmp_path, tiny_model, reward=reward, steps=1, critic_init="policy")
    assert "fresh head" in ppo.load_critic(cfg, ctx, tokenizer=_tokenizer(tiny_model))[1]


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_config_checks():
    base = {"name": "p", "kind": "ppo", "data": {"train": "x.jsonl"}, "reward": {"from": "reward"}}
    with pytest.raises(ValueError, match="exactly one of steps"):
        ppo.PPOStage.model_validate(base)
    with pytest.raises(ValueError, match="multiple of minibatch_size"):
        ppo.PPOStage.model_validate({**base, "steps": 1, "rollout_batch_size": 10, "minibatch_size": 4})
    cfg = ppo.PPOStage.model_validate(
        {**base, "total_episodes": 100, "rollout_batch_size": 16, "model": {"from": "sft"}}
    )
    assert cfg.total_steps(world_size=2) == 4  # ceil(100 / 32)
    assert cfg.critic_design == "separate" and cfg.peak_flops is None
    steps = {**base, "steps": 1}
    with pytest.raises(ValueError, match="critic: a shared critic.*remove critic:"):
        ppo.PPOStage.model_validate({**steps, "critic_design": "shared", "critic": {"from": "reward"}})
    with pytest.raises(ValueError, match="critic_init: reward cannot start a shared critic"):
        ppo.PPOStage.model_validate({**steps, "critic_design": "shared", "critic_init": "reward"})
    with pytest.raises(ValueError, match="critic_lora is set but critic_design is separate"):
        ppo.PPOStage.model_validate({**steps, "critic_lora": {"r": 4}})
    lora = ppo.PPOStage.model_validate({**steps, "critic_design": "lora", "critic_lora": {"r": 4}})
    assert lora.critic_lora.r == 4
    assert cfg.references() == [("model", "sft"), ("reward", "reward")]  # the pipeline checks both exist


@pytest.mark.parametrize("design", ["separate", "shared", "lora"])
def test_each_critic_design_learns_the_values(tmp_path, tiny_model, design):
    """The critic's value estimates train whatever its design: started with a fresh head (explained
    variance far below 0), the explained variance of the returns rises over a dozen updates."""
    cfg, ctx = make(tmp_path, tiny_model, steps=12, critic_design=design, critic_learning_rate=3e-3)
    result = ppo.run(cfg, ctx)
    ev = logged(ctx, "ppo/explained_variance")
    assert len(ev) == 12 and all(math.isfinite(x) for x in ev)
    first, last = sum(ev[:2]) / 2, sum(ev[-4:]) / 4
    assert last > first + 1.0 and last > -1.0, ev
    assert "fresh head" in result.info["critic"]
    assert ("lora r 16" in result.info["critic"]) is (design == "lora")


def test_a_shared_critic_costs_fewer_flops_than_a_separate_one(tmp_path, tiny_model):
    """The no-grad passes and the training of a shared critic skip a whole trunk: the critic's."""
    flops = {}
    for design in ("separate", "shared", "lora"):
        lora = {"critic_lora": {"r": 2, "alpha": 4}} if design == "lora" else {}
        cfg, ctx = make(
            tmp_path, tiny_model, work=design, steps=1, critic_design=design, max_new_tokens=4, **lora
        )
        ppo.run(cfg, ctx)
        flops[design] = {k: logged(ctx, f"perf/flops/{k}")[0] for k in ("sample", "forward", "train")}
    assert flops["shared"]["sample"] == flops["separate"]["sample"]  # the same policy samples
    assert flops["shared"]["forward"] < 0.8 * flops["separate"]["forward"]
    assert flops["shared"]["train"] < 0.7 * flops["separate"]["train"]
    # LoRA on the critic: the same forward plus its adapters; its backward skips the body's weight gradients
    # (at a rank small against the width: at r 16 on this 32-wide model the adapters cost more than they save)
    assert flops["lora"]["forward"] > flops["separate"]["forward"]
    assert flops["lora"]["train"] < flops["separate"]["train"]


def test_critic_init_reward_needs_a_reward_model(tmp_path, tiny_model):
    cfg, ctx = make(tmp_path, tiny_model, critic_init="reward")
    with pytest.raises(ConfigError, match="critic_init: reward, but the reward has no reward model"):
        ppo.load_critic(cfg, ctx, tokenizer=_tokenizer(tiny_model))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("launch", "design"),
    [
        ("cpu_2proc", "separate"),
        ("cpu_2proc_zero3", "separate"),
        ("cpu_2proc", "shared"),
        ("cpu_2proc_zero3", "shared"),
    ],
)
def test_two_cpu_processes_train_one_policy(tmp_path, launch, design, monkeypatch):
    """launch/cpu_2proc.yaml: two real processes (world size asserted: the `--cpu` trap starts one), each
    rolling out its own prompts; the loss averaged over them is the same on both ranks from the first
    step, and the policy's weights stay identical (gradients are all-reduced). Under ZeRO-3 (weights
    sharded, gathered once per rollout) the same, and the artifact holds the whole weights. A shared
    critic (the value head inside the one wrapped module) likewise."""
    from safetensors import safe_open

    from rlft.pipeline import run_pipeline
    from rlft.pipeline_file import load_pipeline

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")

    (tmp_path / "rewards.py").write_text(REWARDS)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"""
name: p2
launch: {launch}
model:
  tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}
stages:
  - name: ppo
    kind: ppo
    data: {{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 64}}
    reward: {{function: rewards.py:uppercase_share}}
    steps: 2
    rollout_batch_size: 8
    minibatch_size: 4
    max_new_tokens: 4
    learning_rate: 1.0e-3
    save_steps: 1
    critic_design: {design}
"""
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(pipeline), run_dir=run_dir)
    record = json.loads((run_dir / "ppo" / "stage.json").read_text())
    assert record["status"] == "done" and record["world_size"] == 2
    ranks = [json.loads((run_dir / "ppo" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert (
        len(ranks[0]["losses"]) == 2 and ranks[0]["losses"][0] == ranks[1]["losses"][0]
    )  # the first step's loss
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["local_losses"][0] != ranks[1]["local_losses"][0]  # each rank trained on its own rollouts
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # one policy, kept in sync
    assert record["metrics"]["ppo/episodes"] == 2 * 8 * 2
    with safe_open(str(run_dir / "ppo" / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    assert shapes["model.embed_tokens.weight"][1] == 32 and all(0 not in s for s in shapes.values())


def test_pipeline_checks_and_hashes_the_reward_artifact(tmp_path):
    """`reward: {from: reward}` must name an earlier stage, and its artifact is an input of the PPO stage:
    a retrained reward model re-runs PPO."""
    from rlft.pipeline import stage_fingerprint
    from rlft.pipeline_file import load_pipeline

    def pipeline(order: list[str]) -> Path:
        stages = {
            "reward": f"  - {{name: reward, kind: reward, data: {{train: {QUICKSTART_DATA}/prefs_train.jsonl}}}}\n",
            "ppo": f"  - {{name: ppo, kind: ppo, steps: 1, data: {{train: {QUICKSTART_DATA}/heldout_prompts.jsonl}}, "
            "reward: {sum: [{from: reward}, {function: reward_models.tasks:uppercase_copy}]}}\n",
        }
        path = tmp_path / f"{'-'.join(order)}.yaml"
        path.write_text("name: p\nmodel: org/model\nstages:\n" + "".join(stages[s] for s in order))
        return path

    with pytest.raises(
        ConfigError, match=r"stages\[0\]\.reward\.from: 'reward' is not an earlier stage; it comes later"
    ):
        load_pipeline(pipeline(["ppo", "reward"]))
    loaded = load_pipeline(pipeline(["reward", "ppo"]))
    stage = loaded.stages[1]

    def inputs(reward_hash: str) -> dict:
        paths = {"reward": str(tmp_path / "reward")}
        return stage_fingerprint(loaded, stage, tmp_path, paths, {"reward": reward_hash})[1]

    assert inputs("aaa")["reward"] == {"from:reward": "aaa"}  # the installed verifier's module is not hashed
    assert inputs("aaa") != inputs("bbb")


def test_a_reward_model_with_another_tokenizer_scores_but_does_not_start_the_critic(tmp_path, tiny_model):
    """The reward model scores text with its own tokenizer, so any tokenizer works for the reward; the
    critic reads the policy's token ids, so `auto` starts it from the policy instead (and says so)."""
    from transformers import AutoModelForSequenceClassification

    other = build_tiny_from_texts(
        ["completely different text 0123456789"] * 8,
        tmp_path / "other",
        hidden_size=32,
        num_layers=1,
        num_heads=2,
        vocab_size=300,
    )
    rm = AutoModelForSequenceClassification.from_pretrained(other, num_labels=1)
    rm.config.pad_token_id = 0
    rm.save_pretrained(other)
    cfg, ctx = make(tmp_path, tiny_model, reward={"path": str(other)}, steps=1)
    logs = []
    ctx.log = logs.append
    critic, what = ppo.load_critic(cfg, ctx, tokenizer=_tokenizer(tiny_model))
    assert "fresh head" in what and any("has another tokenizer" in line for line in logs)
    cfg, ctx = make(tmp_path, tiny_model, reward={"path": str(other)}, steps=1, critic_init="reward")
    with pytest.raises(ConfigError, match="has another tokenizer.*critic_init: policy"):
        ppo.load_critic(cfg, ctx, tokenizer=_tokenizer(tiny_model))
    result = ppo.run(*make(tmp_path, tiny_model, work="run", reward={"path": str(other)}, steps=1))
    assert math.isfinite(result.metrics["ppo/score"])  # scored through the reward model's own tokenizer
