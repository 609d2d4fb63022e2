"""A markdown table of the stages that ran in some run folders: seconds, tokens/s, peak memory.

    python benchmarks/gpu_table.py runs/gpu_check/quickstart_bf16 runs/gpu_check/dpo_zero2 ...

Read from each stage's `stage.json` (seconds, world size, peak memory) and `metrics.jsonl`
(tokens). A run folder's `summary.json` says which stages ran in that run (a stage copied in or
skipped is left out); without one, every finished stage is shown. benchmarks/gpu_check.sh prints it.

tokens/s: for trainer stages (SFT, reward, DPO, ...), the tokens trained on (TRL's cumulative
`train/num_tokens`, all processes) per second of `train/runtime`; for PPO, the response tokens
generated per second of update (`ppo/episodes` x `ppo/response_length` over `perf/seconds_per_step`);
a stage that logs `perf/tokens_per_second` gives its mean instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ["run", "stage", "kind", "procs", "seconds", "tokens/s", "peak GPU MiB", "peak RSS MiB"]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tokens_per_second(rows: list[dict[str, Any]]) -> float | None:
    """Throughput from a stage's metrics.jsonl rows (see the module docstring), None when unknown."""
    logged = [r["perf/tokens_per_second"] for r in rows if "perf/tokens_per_second" in r]
    if logged:
        return sum(logged) / len(logged)
    counts = [(r["step"], r["train/num_tokens"]) for r in rows if "train/num_tokens" in r and r.get("step")]
    runtimes = [(r["step"], r["train/runtime"]) for r in rows if r.get("train/runtime")]
    if counts and runtimes:
        (step, tokens), (final_step, runtime) = counts[-1], runtimes[-1]
        return (
            tokens * (final_step / step) / runtime
        )  # tokens are logged every logging_steps: scale to the end
    generated, seconds, episodes = 0.0, 0.0, 0
    for r in rows:
        if "perf/seconds_per_step" in r and "ppo/episodes" in r and "ppo/response_length" in r:
            generated += (r["ppo/episodes"] - episodes) * r["ppo/response_length"]
            seconds += r["perf/seconds_per_step"]
            episodes = r["ppo/episodes"]
    return generated / seconds if seconds else None


def stage_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per stage that ran in `run_dir`, in pipeline order."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        names = [e["stage"] for e in json.loads(summary.read_text()) if e.get("status") == "ran"]
    else:
        records = [json.loads(p.read_text()) for p in run_dir.glob("*/stage.json")]
        names = [r["stage"] for r in sorted(records, key=lambda r: r.get("started", 0))]
    rows = []
    for name in names:
        record = json.loads((run_dir / name / "stage.json").read_text())
        if record.get("status") != "done":
            continue
        peak = (record.get("info") or {}).get("peak_memory") or {}
        rows.append(
            {
                "run": run_dir.name,
                "stage": name,
                "kind": record.get("kind", "?"),
                "procs": record.get("world_size", 1),
                "seconds": record.get("seconds"),
                "tokens/s": tokens_per_second(read_jsonl(run_dir / name / "metrics.jsonl")),
                "peak GPU MiB": peak.get("gpu_max_allocated_mib"),
                "peak RSS MiB": peak.get("rss_mib"),
            }
        )
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders (runs/<name>)")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not r.is_dir()]
    if missing:
        print(f"gpu_table: no such run folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    print(markdown_table([row for run in args.runs for row in stage_rows(run)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
