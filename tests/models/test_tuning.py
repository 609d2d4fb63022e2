"""Tuning strategies on a tiny model: only the intended parameters change, the loss falls, the
artifact reloads with the same logits; freezing and gradual unfreezing; chaining stages."""

from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context
from pydantic import ValidationError

from rlft.errors import ConfigError
from rlft.models.loading import ResolvedModel, load_causal_lm, load_reference
from rlft.models.tiny import build_tiny_from_texts
from rlft.models.tuning import (
    FreezeTuning,
    GradualUnfreezing,
    PrefixTuning,
    PromptTuning,
    apply_tuning,
    kept_adapter,
    save_model,
)
from rlft.stages import reward, sft

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])  # (B, T) any token ids

# method -> (tuning block, learning rate, which parameter names must change: all the others must not)
METHODS = {
    "full": ({"method": "full"}, 3e-3, lambda n: True),
    "freeze": (
        {"method": "freeze", "last_n_blocks": 1, "modules": ["norm"]},
        3e-3,
        lambda n: n.startswith("model.layers.1.") or n == "model.norm.weight",
    ),
    "lora": ({"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, 1e-2, lambda n: ".lora_" in n),
    "dora": ({"method": "dora", "r": 4, "alpha": 8, "dropout": 0.0}, 1e-2, lambda n: ".lora_" in n),
    "adapter": ({"method": "adapter"}, 2e-1, lambda n: ".ia3_l." in n),
    "prompt_tuning": (
        {"method": "prompt_tuning", "num_virtual_tokens": 4, "init_text": "shout"},
        3e-1,
        lambda n: n.startswith("prompt_encoder."),
    ),
    "prefix_tuning": (
        {"method": "prefix_tuning", "num_virtual_tokens": 4, "init_text": "shout"},
        3e-1,
        lambda n: n.startswith("prompt_encoder."),
    ),
}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny model (hidden 32, 2 layers) given a little full SFT first, so that small adapters have
    something to steer (on a random model their loss barely moves)."""
    folder = tmp_path_factory.mktemp("tiny")
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    tiny = build_tiny_from_texts(texts, folder / "random", hidden_size=32, num_layers=2, num_heads=2)
    cfg, ctx = make(folder / "pre", tiny, {"method": "full"}, steps=80, lr=1e-2, evaluate=False)
    cfg.trainer = {**cfg.trainer, "lr_scheduler_type": "constant"}
    ctx.artifact_dir = folder / "base"
    sft.run(cfg, ctx)
    return ctx.artifact_dir


def make(tmp_path: Path, model: Path | str, tuning: dict, *, steps: int = 30, lr: float = 3e-3, **extra):
    spec = {
        "name": "sft",
        "kind": "sft",
        "model": {"path": str(model)} if isinstance(model, Path) else {"from": model},
        "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 256},
        "tuning": tuning,
        "trainer": {
            "max_steps": steps,
            "learning_rate": lr,
            "logging_steps": 5,
            "per_device_train_batch_size": 16,
            "save_strategy": "no",
        },
        **extra,
    }
    work = tmp_path / "work"
    ctx = stage_context(tmp_path, work)
    return sft.SFTStage.model_validate(spec), ctx


def logits(model, ids=IDS):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_trains_only_its_parameters_loss_falls_and_artifact_reloads(tmp_path, base, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tuning, lr, should_change = METHODS[method]
    cfg, ctx = make(tmp_path, base, tuning, lr=lr)
    trainer, info = sft.make_trainer(cfg, ctx)
    model = trainer.model
    before = snapshot(model)
    fixed = trainer.train_dataset.select(range(64))  # the same rows before and after: no batch noise
    loss_before = trainer.evaluate(eval_dataset=fixed)["eval_loss"]
    trainer.train()
    loss_after = trainer.evaluate(eval_dataset=fixed)["eval_loss"]
    assert loss_after < 0.99 * loss_before, (loss_before, loss_after)

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == {n for n in before if should_change(n)}
    trainable = sum(p.numel() for n, p in model.named_parameters() if should_change(n))
    assert info["parameters"]["trainable"] == trainable

    expected = logits(model)
    saved = save_model(model, trainer.processing_class, tmp_path / "artifact")
    reloaded = load_causal_lm(ResolvedModel(str(tmp_path / "artifact")))
    assert torch.allclose(logits(reloaded), expected, atol=1e-5)

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "artifact")
    if method in ("prompt_tuning", "prefix_tuning"):  # kept as a PEFT prompt on the untouched base
        assert saved == {"merged": False, "adapter": "adapter/", "peft": method}
        assert isinstance(reloaded, PeftModel) and kept_adapter(tmp_path / "artifact") is not None
        original = AutoModelForCausalLM.from_pretrained(base).state_dict()
        assert all(torch.equal(t, original[k]) for k, t in plain.state_dict().items())
    else:  # one plain model: from_pretrained alone gives the adapted model
        assert not isinstance(reloaded, PeftModel)
        assert saved["merged"] is (method in ("lora", "dora", "adapter"))
        assert torch.allclose(logits(plain), expected, atol=1e-5)


@pytest.mark.parametrize("method", list(METHODS))
def test_reward_model_methods_train_their_parameters_and_the_head(tmp_path, base, method):
    from transformers import AutoModelForSequenceClassification

    from reward_models import RewardModel
    from rlft.rl.critic import value_model_from

    tuning, _, should_change = METHODS[method]
    spec = {
        "name": "rm",
        "kind": "reward",
        "model": {"path": str(base)},
        "data": {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 64},
        "tuning": tuning,
        "trainer": {
            "max_steps": 4,
            "learning_rate": 1e-2,
            "per_device_train_batch_size": 8,
            "save_strategy": "no",
        },
    }
    work = tmp_path / "work"
    ctx = stage_context(tmp_path, work)
    trainer, info = reward.make_trainer(reward.RewardStage.model_validate(spec), ctx)
    model = trainer.model
    before = snapshot(model)
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    head = {n for n in before if "score" in n and "original_module" not in n}
    assert head and head <= changed  # the fresh score head always trains
    assert changed - head == {n for n in before if should_change(n) and n not in head}

    expected = logits(model)
    saved = save_model(model, trainer.processing_class, tmp_path / "artifact")
    plain, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "artifact", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]  # the trained head is at the root
    if method in ("prompt_tuning", "prefix_tuning"):  # the prompt is kept in adapter/ and re-attached
        assert saved == {"merged": False, "adapter": "adapter/", "peft": method}
        assert not torch.allclose(logits(plain), expected, atol=1e-3)
        reloaded = load_causal_lm(
            ResolvedModel(str(tmp_path / "artifact")), auto_class="AutoModelForSequenceClassification"
        )
        critic, head = value_model_from(reloaded)  # a PPO critic starts from the trained head
        assert head == "reward head" and torch.equal(critic.head.weight, plain.score.weight)
    else:
        reloaded = plain
    assert torch.allclose(logits(reloaded), expected, atol=1e-5)
    scorer = RewardModel.from_pretrained(tmp_path / "artifact", device="cpu")
    assert torch.allclose(logits(scorer.model), expected, atol=1e-5)


def test_gradual_unfreezing_opens_blocks_top_down_on_schedule(tmp_path, base):
    from transformers import TrainerCallback

    tuning = {"method": "freeze", "modules": ["norm"], "unfreeze_every": 2}
    cfg, ctx = make(tmp_path, base, tuning, steps=6, lr=1e-2)
    history = []  # after each optimizer step: (step, block 0 changed?, block 1 changed?, norm changed?)

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            now = snapshot(model)
            history.append((state.global_step, *(changed(now, part) for part in parts)))

    parts = ("model.layers.0.", "model.layers.1.", "model.norm.")
    trainer, _ = sft.make_trainer(cfg, ctx, callbacks=[Watch()])
    start = snapshot(trainer.model)

    def changed(now, prefix):
        return any(not torch.equal(start[n], now[n]) for n in start if n.startswith(prefix))

    trainer.train()
    # block 1 opens after 2 steps (changes in step 3), block 0 after 4 (changes in step 5); norm from the start
    assert history == [
        (1, False, False, True),
        (2, False, False, True),
        (3, False, True, True),
        (4, False, True, True),
        (5, True, True, True),
        (6, True, True, True),
    ]
    embeddings = "model.embed_tokens.weight"
    assert torch.equal(start[embeddings], trainer.model.state_dict()[embeddings])


def test_gradual_unfreezing_depends_only_on_the_step(base):
    model = load_causal_lm(ResolvedModel(str(base)))
    cfg = FreezeTuning(last_n_blocks=1, unfreeze_every=10)
    model = apply_tuning(model, cfg)
    schedule = GradualUnfreezing.from_config(model, cfg)
    assert schedule.order == [0] and schedule.describe().endswith("block 0 at step 10")

    def trains(i):
        return all(p.requires_grad for p in model.model.layers[i].parameters())

    assert trains(0) and trains(1)  # before training: in the optimizer
    for step, expected in (
        (0, False),
        (9, False),
        (10, True),
        (3, False),
        (25, True),
    ):  # a resume may go back
        schedule.apply(step)
        assert trains(0) is expected and trains(1)
    assert not model.model.embed_tokens.weight.requires_grad


def test_freeze_config_errors_say_what_to_do(base):
    with pytest.raises(ValidationError, match="nothing would train at step 0"):
        FreezeTuning(unfreeze_every=5)
    model = load_causal_lm(ResolvedModel(str(base)))
    with pytest.raises(ConfigError, match=r"no module named 'final_norm' \(outside the blocks: .*norm"):
        apply_tuning(model, FreezeTuning(modules=["final_norm"]))
    with pytest.raises(ConfigError, match="block 2 does not exist .* 2 blocks: 0..1"):
        apply_tuning(model, FreezeTuning(blocks=[2]))
    with pytest.raises(ConfigError, match="'lm_head' shares its weight with the input embeddings"):
        apply_tuning(model, FreezeTuning(modules=["lm_head"]))
    apply_tuning(model, FreezeTuning(modules=["lm_head"], train_embeddings=True, blocks=[-2]))
    assert model.lm_head.weight.requires_grad and all(
        p.requires_grad for p in model.model.layers[0].parameters()
    )
    assert not any(p.requires_grad for p in model.model.layers[1].parameters())


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_init_text_starts_as_that_text_in_front_of_the_input(base, method):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    text = "shout: a b"
    text_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(text_ids)
    model = load_causal_lm(ResolvedModel(str(base)))
    reference = logits(model, torch.cat([torch.tensor([text_ids] * 2), IDS], dim=1))[:, n:]  # (B, T, V)
    cfg = {"prompt_tuning": PromptTuning, "prefix_tuning": PrefixTuning}[method](
        num_virtual_tokens=n, init_text=text
    )
    tuned = apply_tuning(model, cfg, tokenizer=tokenizer)
    out = logits(tuned)
    out = out[:, n:] if method == "prompt_tuning" else out  # prompt tuning returns the virtual positions too
    assert torch.allclose(out, reference, atol=1e-5)


def test_later_stages_start_from_a_prompt_artifact_with_its_prompt(tmp_path, base, caplog):
    """Chaining: a prefix-tuned artifact is re-attached (not silently dropped) for the next stage,
    its reference and evaluation; full tuning on top trains base and prefix and keeps both."""
    from peft import PeftModel

    cfg, ctx = make(tmp_path / "a", base, METHODS["prefix_tuning"][0], steps=5, lr=3e-1, evaluate=False)
    sft.run(cfg, ctx)
    first = str(ctx.artifact_dir)
    expected = logits(load_causal_lm(ResolvedModel(first)))

    reference = load_reference(ResolvedModel(first))
    assert isinstance(reference, PeftModel) and not any(p.requires_grad for p in reference.parameters())
    assert torch.allclose(logits(reference), expected)

    with pytest.raises(ConfigError, match="peft cannot stack lora on it; use full, freeze or prefix_tuning"):
        cfg2, ctx2 = make(tmp_path / "b", "first", {"method": "lora"}, steps=2)
        ctx2.model_paths = {"first": first}
        sft.make_trainer(cfg2, ctx2)
    with pytest.raises(ConfigError, match="carries a prefix_tuning prompt of 4 tokens"):
        cfg2, ctx2 = make(
            tmp_path / "b", "first", {"method": "prefix_tuning", "num_virtual_tokens": 8}, steps=2
        )
        ctx2.model_paths = {"first": first}
        sft.make_trainer(cfg2, ctx2)

    logged = []
    cfg2, ctx2 = make(tmp_path / "c", "first", {"method": "full"}, steps=3, evaluate=False)
    ctx2.model_paths = {"first": first}
    ctx2.log = logged.append
    trainer, _ = sft.make_trainer(cfg2, ctx2)
    assert any("re-attaching its learned prompt" in line for line in logged)
    assert isinstance(trainer.model, PeftModel)
    assert torch.allclose(logits(trainer.model), expected)  # step 0: exactly the previous stage's model
    before = snapshot(trainer.model)
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)}
    assert any(n.startswith("prompt_encoder.") for n in changed) and any("layers.0" in n for n in changed)
    out = logits(trainer.model)
    saved = save_model(trainer.model, trainer.processing_class, tmp_path / "second")
    assert saved["peft"] == "prefix_tuning" and not saved["merged"]
    assert torch.allclose(logits(load_causal_lm(ResolvedModel(str(tmp_path / "second")))), out, atol=1e-5)

    caplog.clear()
    scorer = load_causal_lm(
        ResolvedModel(first, description="stage 'first'"),
        auto_class="AutoModelForSequenceClassification",
        num_labels=1,
    )
    logged = [
        r.getMessage() for r in caplog.records if r.name.startswith("rlft") and r.levelname == "WARNING"
    ]
    assert not isinstance(scorer, PeftModel)
    assert "starts from its base weights, without it" in logged[0]


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_greedy_completions_with_a_prompt_are_right_and_do_not_depend_on_the_batch(base, method):
    """Evaluation of a prompt-carrying model equals a greedy loop of full forward passes, in any batch.

    Guards two peft 0.21 + transformers 5 traps: peft ignores position_ids for prompt learning
    (left padding shifts tokens against the prompt), and its generate misses transformers 5's
    KV cache (each step sees the prompt and the last token only)."""
    import json

    from transformers import AutoTokenizer

    from rlft.evaluation import _decode, _encode, greedy_completions

    tokenizer = AutoTokenizer.from_pretrained(base)
    cfg = {"prompt_tuning": PromptTuning, "prefix_tuning": PrefixTuning}[method](num_virtual_tokens=4)
    model = apply_tuning(load_causal_lm(ResolvedModel(str(base))), cfg, tokenizer=tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():  # a prompt moved off its start, as training leaves it
        weight = model.prompt_encoder.default.embedding.weight
        weight.add_(0.02 * torch.randn_like(weight))
    rows = (QUICKSTART_DATA / "heldout_prompts.jsonl").read_text().splitlines()[:10]
    prompts = [json.loads(line)["prompt"] for line in rows]

    expected = []
    for prompt in prompts:  # greedy by hand: the whole sequence through the model at every step
        ids = _encode(tokenizer, prompt)
        new = []
        for _ in range(6):
            with torch.no_grad():
                token = logits(model, torch.tensor([ids + new]))[0, -1].argmax().item()
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
        expected.append(_decode(tokenizer, new))

    assert greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=10) == expected
    assert greedy_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=1) == expected
