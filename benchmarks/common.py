"""What every benchmark shares: the machine it ran on, interleaved repeats, medians and spreads,
and the result file.

A comparison runs both sides in the same invocation, alternately (A B A B ...), so that a change
in the machine's load between repeats falls on both sides alike; its figure is the ratio of the
medians, with the spread of the per-pair ratios beside it. Nothing here asserts a speed: the
numbers are written down (`benchmarks/results/<name>.json`) and README's Performance table is made
from them.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "datasketch")


def machine() -> dict[str, Any]:
    """Where and when the numbers were taken: CPUs, load (other jobs skew every figure), versions."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "versions": versions,
    }


@dataclass
class Figure:
    """One measured quantity over repeats (seconds, rows/s, MiB, ...)."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "median": self.median,
            "min": min(self.values),
            "max": max(self.values),
            "values": self.values,
        }


@dataclass
class Ratio:
    """A / B over pairs of repeats taken one after the other: the ratio of medians and its spread."""

    name: str
    a: Figure
    b: Figure
    goal: str = ""  # e.g. "<= 1.02": how the figure is judged, written next to it

    @property
    def value(self) -> float:
        return self.a.median / self.b.median

    def as_dict(self) -> dict[str, Any]:
        pairs = [x / y for x, y in zip(self.a.values, self.b.values, strict=True)]
        return {
            "ratio": self.value,
            "pair_min": min(pairs),
            "pair_max": max(pairs),
            "goal": self.goal,
            "a": self.a.name,
            "b": self.b.name,
        }


def interleave(
    sides: dict[str, Callable[[], dict[str, float]]], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Run each side `repeats` times, alternately; each call returns named figures."""
    out: dict[str, dict[str, list[float]]] = {name: {} for name in sides}
    for i in range(repeats):
        for name, fn in sides.items():
            figures = fn()
            print(
                f"  [{i + 1}/{repeats}] {name}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()),
                flush=True,
            )
            for key, value in figures.items():
                out[name].setdefault(key, []).append(value)
    return out


def run_command(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[float, str]:
    """Seconds a command took, and its output; a failure stops the benchmark with the output's tail."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, env={**os.environ, **(env or {})}, cwd=cwd, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds, proc.stdout + proc.stderr


@dataclass
class StageRun:
    """One `rlft run` of a one-stage pipeline: its wall time, the stage's stage.json and metrics.jsonl."""

    seconds: float
    record: dict[str, Any]
    metrics: list[dict[str, Any]]

    @property
    def loop(self) -> float:
        """TRL's `train_runtime`: the seconds of `trainer.train()` (logged as train/runtime)."""
        return next(m["train/runtime"] for m in reversed(self.metrics) if "train/runtime" in m)

    @property
    def losses(self) -> list[float]:
        return [m["train/loss"] for m in self.metrics if "train/loss" in m]


def write_pipeline(path: Path, name: str, stage: dict[str, Any]) -> Path:
    """A one-stage pipeline file (no report: it would be timed too). JSON is YAML."""
    path.write_text(json.dumps({"name": name, "seed": 0, "report": False, "stages": [stage]}))
    return path


def run_stage(pipeline: Path, run_dir: Path, stage: str, *, env: dict[str, str] | None = None) -> StageRun:
    """`rlft run PIPELINE --run-dir RUN_DIR` in its own process (quiet_env, plus `env`), and what `stage` left."""
    seconds, _ = run_command(
        [python(), "-m", "rlft", "run", str(pipeline), "--run-dir", str(run_dir)],
        env={**quiet_env(), **(env or {})},
    )
    folder = run_dir / stage
    metrics = [
        json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    return StageRun(seconds, json.loads((folder / "stage.json").read_text()), metrics)


def quiet_env() -> dict[str, str]:
    """What every benchmark's processes run with: no W&B, no hub, no tokenizer threads fighting torch."""
    return {
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }


def python() -> str:
    return sys.executable


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=2) + "\n")
    return path
