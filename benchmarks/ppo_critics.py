"""PPO's critic designs side by side on the quickstart's model and task: cost and result of each.

    OMP_NUM_THREADS=1 python benchmarks/ppo_critics.py                 # 20 updates per run (the quickstart's)
    OMP_NUM_THREADS=1 python benchmarks/ppo_critics.py --quick --json benchmarks/results/ppo_critics.json

One pipeline (rlft's own runner, each stage in its own process): the quickstart's SFT and reward
stages once, then the quickstart's PPO stage once per critic design (`critic_design: separate`,
`shared`, `lora`), with the policy fully trained and, again, with a LoRA policy (whose reference is
then the policy with its adapters disabled). Every PPO run starts from the same SFT model with the
same seed and makes the same number of updates. For each run:

- seconds per update (median over the updates after the first, which pays for warm-up),
- the held-out task reward after training (the pipeline's evaluation: greedy answers to the
  quickstart's held-out prompts, scored by its verifier),
- the FLOPs of an update by phase (rlft.rl.perf: sampling, scoring, the no-grad passes, the
  optimisation epochs) with the seconds each took, and
- the optimisation phase's FLOP/s as a share of the matmul rate timed at the stage's start-up
  (`perf/mfu/train`), and the whole update's (`perf/mfu`).

Then, where the optimisation phase's time goes (skip with --no-profile): one update under
torch.profiler, its self time by category (matmuls, fused attention, elementwise ops and norms, the
softmax over the vocabulary, the optimizer and gradient clipping, the rest) and the FLOP/s inside
the matmuls; on the quickstart's model (real rollouts) and at SmolLM2-135M's width (2 of its 30
layers, random weights, a LoRA policy, 16 rollouts of 40 + 40 tokens). Last, the FLOPs of issue 15's
SmolLM2-135M update by critic design, counted (the models are built on the meta device, not run).

Nothing is asserted; the table is printed (and, with --json, written with the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

DESIGNS = ("separate", "shared", "lora")
POLICIES = {  # policy tuning -> the stage keys it changes (LoRA trains with a higher learning rate)
    "full": {},
    "lora": {"tuning": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0}, "learning_rate": 1.0e-4},
}
PHASES = ("sample", "score", "forward", "train")


def pipeline_config(steps: int) -> tuple[dict[str, Any], Path]:
    """The quickstart's pipeline with its DPO stage dropped and its PPO stage once per design and policy."""
    import yaml

    from rlft.resources import find_pipeline_file

    path = Path(find_pipeline_file("quickstart"))
    config = yaml.safe_load(path.read_text())
    stages = {s["name"]: s for s in config["stages"]}
    ppo = {k: v for k, v in stages["ppo"].items() if k != "name"}
    ppo |= {"steps": steps, "save_steps": steps, "sample_every": steps}
    runs = []
    for policy, keys in POLICIES.items():
        for design in DESIGNS:
            runs.append({"name": f"ppo_{policy}_{design}", **ppo, **keys, "critic_design": design})
    config["stages"] = [stages["sft"], stages["reward"], *runs]
    config["name"] = "ppo_critics"
    config["report"] = False  # the HTML report is not what is measured
    return config, path.parent


def summarise(run_dir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """One PPO run's row: seconds per update, held-out reward, FLOPs and seconds by phase, MFU."""
    lines = (run_dir / entry["stage"] / "metrics.jsonl").read_text().splitlines()
    steps = [m for m in map(json.loads, lines) if "perf/flops_per_step" in m]
    later = steps[1:] or steps  # the first update pays for warm-up (allocations, kernel choices)

    def median(key: str) -> float:
        return statistics.median(m[key] for m in later)

    _, policy, design = entry["stage"].split("_")
    return {
        "policy": policy,
        "design": design,
        "updates": len(steps),
        "seconds_per_update": median("perf/seconds_per_step"),
        "heldout_reward": entry.get("task_reward"),
        "final_score": steps[-1]["ppo/score"],
        "explained_variance": steps[-1]["ppo/explained_variance"],
        "flops_per_update": median("perf/flops_per_step"),
        "flops": {p: median(f"perf/flops/{p}") for p in PHASES},
        "seconds": {p: median(f"perf/seconds/{p}") for p in (*PHASES, "other")},
        "mfu": median("perf/mfu"),
        "mfu_train": median("perf/mfu/train"),
        "matmul_flops_per_second": median("perf/matmul_flops_per_second"),
        "stage_seconds": entry.get("seconds"),
    }


# profiler op name -> where its time goes (the first matching fragment wins; the rest is "other")
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention", ("scaled_dot_product", "flash_attention")),
    ("optimizer", ("adam", "_foreach", "clip_grad", "aten::norm", "linalg_vector_norm")),
    ("softmax over the vocabulary", ("logsumexp", "softmax", "gather")),
    (
        "elementwise and norms",
        (
            "aten::mul",
            "aten::add",
            "aten::sub",
            "aten::div",
            "silu",
            "rsqrt",
            "aten::pow",
            "aten::mean",
            "aten::neg",
            "aten::exp",
            "aten::where",
            "aten::cat",
            "aten::sum",
            "aten::clamp",
            "aten::maximum",
            "aten::copy_",
            "aten::to",
            "aten::fill_",
            "aten::zero_",
            "aten::cos",
            "aten::sin",
            "embedding",
            "threshold",
            "sigmoid",
        ),
    ),
)


def seconds_by_category(prof: Any) -> dict[str, float]:
    """Self time of every profiled op, by category: an op run inside the optimizer's step or the gradient
    clipping counts as "optimizer" whatever its name (AdamW's per-tensor mul/add/sqrt on a CPU)."""
    by_category: dict[str, float] = {}
    for event in prof.events():
        ancestor, inside = event.cpu_parent, False
        while ancestor is not None and not inside:
            inside = ancestor.name.startswith("Optimizer.") or "clip_grad" in ancestor.name
            ancestor = ancestor.cpu_parent
        name = event.name.lower()
        category = (
            "optimizer"
            if inside
            else next((c for c, parts in CATEGORIES if any(p in name for p in parts)), "other")
        )
        by_category[category] = by_category.get(category, 0.0) + event.self_cpu_time_total / 1e6
    return by_category


def profiled_update(
    model: Any, exp: Any, *, minibatch_size: int, ppo_epochs: int, critic_cost: Any
) -> dict[str, Any]:
    """One PPO update of `model` on `exp`, after one to warm up: timed alone, then again under
    torch.profiler; its FLOPs (rlft.rl.perf), their share of the timed matmul rate, the profiled self
    time by category and the FLOP/s inside the matmuls (attention runs in its own fused kernel)."""
    import torch
    from accelerate import Accelerator
    from torch.profiler import ProfilerActivity, profile

    from rlft.rl.perf import measure_matmul_flops, model_cost, ppo_step_flops
    from rlft.rl.update import make_optimizer, ppo_update

    optimizer, _ = make_optimizer(
        model.policy,
        model.critic,
        lr=1e-5,
        critic_lr=1e-5,
        adam_eps=1e-5,
        schedule="constant",
        total_updates=100,
    )
    settings = {
        "accelerator": Accelerator(cpu=True),
        "ppo_epochs": ppo_epochs,
        "minibatch_size": minibatch_size,
        "gradient_accumulation_steps": 1,
        "temperature": 0.7,
        "clip": 0.2,
        "vf_clip": 0.2,
        "vf_coef": 0.1,
        "entropy_coef": 0.0,
        "max_grad_norm": 1.0,
    }
    ppo_update(model, optimizer, exp, generator=torch.Generator().manual_seed(0), **settings)  # warm-up
    start = time.perf_counter()
    ppo_update(model, optimizer, exp, generator=torch.Generator().manual_seed(1), **settings)
    seconds = time.perf_counter() - start
    rate = measure_matmul_flops(torch.float32, "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ppo_update(model, optimizer, exp, generator=torch.Generator().manual_seed(2), **settings)
    rows, width = exp.sequences.shape
    response = exp.response_mask.shape[1]
    policy = model_cost(model.policy)
    flops = ppo_step_flops(
        policy=policy,
        critic=critic_cost,
        reference=policy,
        rows=rows,
        prompt_tokens=width - response,
        response_tokens=response,
        ppo_epochs=ppo_epochs,
    )["train"]
    # attention's FLOPs (forward + backward = 3 x 4 L d T^2 per row and epoch, each trunk) are not the matmuls'
    trunks = [policy] + ([critic_cost] if critic_cost.layers else [])
    attention = sum(3 * 4 * c.layers * c.attention_width * width * width * rows * ppo_epochs for c in trunks)
    by_category = seconds_by_category(prof)
    total = sum(by_category.values())
    order = sorted(by_category, key=lambda k: -by_category[k])
    return {
        "rows": rows,
        "prompt_tokens": width - response,
        "response_tokens": response,
        "ppo_epochs": ppo_epochs,
        "seconds": seconds,
        "flops": flops,
        "matmul_rate": rate,
        "mfu": flops / seconds / rate,
        "share_by_category": {k: by_category[k] / total for k in order},
        "matmul_flops_per_second": (flops - attention) / by_category.get("matmul", float("nan")),
    }


def profile_quickstart(run_dir: Path, design: str) -> dict[str, Any]:
    """The optimisation phase of a quickstart update (4 epochs x 4 minibatches of 16): the SFT policy and the
    design's critic (the reward model's, or a head on the policy) on real rollouts of the quickstart's prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlft.resources import find_pipeline_file
    from rlft.rl.critic import ActorCritic, SharedActorCritic, shared_value_head, value_model_from
    from rlft.rl.perf import head_cost, model_cost
    from rlft.rl.rollout import encode_prompts, experience_from_rollout, left_pad, sample_responses

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "sft")
    policy = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    if design == "shared":
        model = SharedActorCritic(policy, shared_value_head(policy))
        critic_cost = head_cost(model.critic)
    else:
        rm = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward", num_labels=1)
        model = ActorCritic(policy, value_model_from(rm)[0])
        critic_cost = model_cost(model.critic)
    data = Path(find_pipeline_file("quickstart")).parent / "data" / "quickstart" / "prefs_train.jsonl"
    prompts = [json.loads(line)["prompt"] for line in data.read_text().splitlines()[:64]]
    ids, mask = left_pad(encode_prompts(tokenizer, prompts), tokenizer.pad_token_id)
    model.eval()
    rollout = sample_responses(
        policy,
        ids,
        mask,
        max_new_tokens=24,
        temperature=0.7,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    exp = experience_from_rollout(
        model,
        policy,
        rollout,
        torch.rand(len(prompts)),
        temperature=0.7,
        forward_batch_size=16,
        reference_disable_adapter=False,
        beta=0.05,
        gamma=1.0,
        lam=0.95,
        kl_kind="k1",
        whiten_rewards=False,
        missing_eos_penalty=None,
    )
    return {"model": "quickstart", "policy": "full", "design": design} | profiled_update(
        model, exp, minibatch_size=16, ppo_epochs=4, critic_cost=critic_cost
    )


def profile_smollm2_width(design: str, *, layers: int = 2) -> dict[str, Any]:
    """The optimisation phase at SmolLM2-135M's width (H 576, I 1536, V 49152; `layers` of its 30, random
    weights): a LoRA policy (r 16) and the design's critic, 16 rollouts of 40 + 40 tokens, 1 epoch of 2
    minibatches (the issue's update has 4 epochs: the same work 4 times)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlft.rl.critic import ActorCritic, SharedActorCritic, shared_value_head, value_model_from
    from rlft.rl.experience import make_experience
    from rlft.rl.perf import head_cost, model_cost

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
    policy = get_peft_model(LlamaForCausalLM(config), lora)
    if design == "shared":
        model = SharedActorCritic(policy, shared_value_head(policy))
        critic_cost = head_cost(model.critic)
    else:
        model = ActorCritic(policy, value_model_from(LlamaForCausalLM(config))[0])
        critic_cost = model_cost(model.critic)
    rows, prompt, response = 16, 40, 40
    zeros = torch.zeros(rows, response)
    exp = make_experience(
        sequences=torch.randint(0, config.vocab_size, (rows, prompt + response)),
        attention_mask=torch.ones(rows, prompt + response, dtype=torch.long),
        response_mask=torch.ones(rows, response, dtype=torch.bool),
        old_logprobs=zeros - 10,
        ref_logprobs=zeros - 10,
        values=zeros,
        scores=torch.rand(rows),
        ended_with_eos=torch.ones(rows, dtype=torch.bool),
        beta=0.05,
        gamma=1.0,
        lam=0.95,
        kl_kind="k1",
        whiten_rewards=False,
        whiten_advantages=True,
    )
    return {"model": f"SmolLM2 width, {layers} layers", "policy": "lora", "design": design} | profiled_update(
        model, exp, minibatch_size=8, ppo_epochs=1, critic_cost=critic_cost
    )


def counted_smollm2(*, prompt_tokens: int = 40, response_tokens: int = 40) -> dict[str, dict[str, float]]:
    """TFLOPs of the update issue 15 timed on SmolLM2-135M (counted, not run: the models are built on
    the meta device): a LoRA policy (r 16, all linear maps), 16 rollouts of P prompt + A response
    positions, 4 epochs; the reference is the policy with its adapters off; per critic design."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlft.rl.critic import fresh_value_head, lora_critic, value_model_from
    from rlft.rl.perf import head_cost, model_cost, ppo_step_flops

    config = LlamaConfig(  # SmolLM2-135M's shape
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        policy = get_peft_model(
            LlamaForCausalLM(config), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
        )
        critics = {
            "separate": model_cost(value_model_from(LlamaForCausalLM(config))[0]),
            "shared": head_cost(fresh_value_head(config.hidden_size)),
            "lora": model_cost(
                lora_critic(
                    value_model_from(LlamaForCausalLM(config))[0], r=16, alpha=32, target_modules="all-linear"
                )
            ),
        }
    cost = model_cost(policy)
    out = {}
    for design, critic in critics.items():
        flops = ppo_step_flops(
            policy=cost,
            critic=critic,
            reference=cost.without_adapters(),
            rows=16,
            prompt_tokens=prompt_tokens,
            response_tokens=response_tokens,
            ppo_epochs=4,
        )
        out[design] = {**{p: v / 1e12 for p, v in flops.items()}, "total": sum(flops.values()) / 1e12}
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown tables: the designs side by side, then the FLOPs and seconds of each phase."""
    out = [
        "| policy | critic | s / update | held-out reward | GFLOP / update | optimisation GFLOP/s | "
        "matmul rate GFLOP/s | MFU (update) | MFU (optimisation) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        reward = "-" if r["heldout_reward"] is None else f"{r['heldout_reward']:.3f}"
        achieved = r["flops"]["train"] / r["seconds"]["train"] / 1e9
        out.append(
            f"| {r['policy']} | {r['design']} | {r['seconds_per_update']:.3f} | {reward} | "
            f"{r['flops_per_update'] / 1e9:.2f} | {achieved:.1f} | {r['matmul_flops_per_second'] / 1e9:.0f} | "
            f"{r['mfu']:.1%} | {r['mfu_train']:.1%} |"
        )
    out += [
        "",
        "| policy | critic | " + " | ".join(f"{p} GFLOP (s)" for p in PHASES) + " | other (s) |",
        "| --- | --- | " + " | ".join("---" for _ in PHASES) + " | --- |",
    ]
    for r in rows:
        cells = [f"{r['flops'][p] / 1e9:.3f} ({r['seconds'][p]:.3f})" for p in PHASES]
        out.append(
            f"| {r['policy']} | {r['design']} | " + " | ".join(cells) + f" | {r['seconds']['other']:.3f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 updates per PPO run instead of 20")
    parser.add_argument("--steps", type=int, help="PPO updates per run (default 20, or 10 with --quick)")
    parser.add_argument("--json", type=Path, help="write the rows, the tables and the machine here")
    parser.add_argument("--run-dir", type=Path, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled update of each critic")
    args = parser.parse_args()
    steps = args.steps or (10 if args.quick else 20)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from rlft.api import Pipeline

    config, base_dir = pipeline_config(steps)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="rlft-bench-ppo-critics-") as tmp:
        run_dir = args.run_dir or Path(tmp) / "run"
        os.environ.setdefault("RLFT_CACHE_DIR", f"{tmp}/cache")
        start = time.perf_counter()
        entries = Pipeline.from_dict(config, base_dir=base_dir).run(run_dir=run_dir)
        wall = time.perf_counter() - start
        rows = [summarise(run_dir, e) for e in entries if e["stage"].startswith("ppo_")]
        profiles = [] if args.no_profile else [profile_quickstart(run_dir, d) for d in ("separate", "shared")]
    if not args.no_profile:
        profiles += [profile_smollm2_width(d) for d in ("separate", "shared")]
    smollm2 = counted_smollm2()
    text = table(rows)
    text += "\n\nSmolLM2-135M, LoRA policy, 16 rollouts of 40 + 40 positions, 4 epochs (TFLOP, counted):\n"
    text += "| critic | " + " | ".join(PHASES) + " | total |\n| --- |" + " --- |" * (len(PHASES) + 1) + "\n"
    for design, tflops in smollm2.items():
        text += f"| {design} | " + " | ".join(f"{tflops[p]:.3f}" for p in (*PHASES, "total")) + " |\n"
    print(text)
    for p in profiles:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in p["share_by_category"].items())
        print(
            f"\nprofiled optimisation phase, {p['model']}, {p['policy']} policy, {p['design']} critic "
            f"({p['rows']} rollouts of {p['prompt_tokens']} + {p['response_tokens']}, {p['ppo_epochs']} epochs): "
            f"{p['seconds']:.2f} s, {p['flops'] / 1e9:.1f} GFLOP, {p['mfu']:.0%} of {p['matmul_rate'] / 1e9:.0f} "
            f"GFLOP/s; time: {shares}; inside the matmuls {p['matmul_flops_per_second'] / 1e9:.0f} GFLOP/s"
        )
    print(
        f"\n{wall:.0f} s in all; load average before {before['load_average']}, after {machine()['load_average']}"
    )
    if args.json:
        result = {
            "benchmark": "ppo_critics",
            "machine": machine(),
            "load_average_before": before["load_average"],
            "updates_per_run": steps,
            "wall_seconds": wall,
            "rows": rows,
            "profiles": profiles,
            "smollm2_counted_tflops": smollm2,
            "table": text,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
