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


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown tables: the designs side by side, then the FLOPs and seconds of each phase."""
    out = [
        "| policy | critic | s / update | held-out reward | GFLOP / update | MFU (update) | MFU (optimisation) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        reward = "-" if r["heldout_reward"] is None else f"{r['heldout_reward']:.3f}"
        out.append(
            f"| {r['policy']} | {r['design']} | {r['seconds_per_update']:.3f} | {reward} | "
            f"{r['flops_per_update'] / 1e9:.2f} | {r['mfu']:.1%} | {r['mfu_train']:.1%} |"
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
    text = table(rows)
    print(text)
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
            "table": text,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
