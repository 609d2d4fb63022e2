"""`rlft sweep PIPELINE --grid KEY=[V1,V2] ...`: the pipeline once per point of a grid, one table.

    rlft sweep configs/quickstart.yaml --grid 'stages.dpo.beta=[0.05,0.1,0.3]' \\
                                       --grid 'data.curate.flip_fraction=[0,0.2]'

Keys are those of `rlft run --set`: `stages.NAME.KEY` for one stage; `data.KEY` (no stage) for
every stage that trains on preference data (reward, dpo, kto); other keys for the pipeline's top
level (`seed`, ...). Several `--grid`s make the product of their values, the first varying slowest.

    runs/<pipeline>-sweep/
      <point>/        a normal run folder per point, named after its values: beta=0.05,flip_fraction=0
      cache/          cached reference log-probs, shared by every point (RLFT_CACHE_DIR)
      sweep.csv       one row per point: its grid values and final metrics
      sweep.json      the same, with each point's folder and stage statuses
      report.html     `rlft report` over every finished point: reward against KL across the points
                      (with their Pareto frontier), each point's lineage, curves and evaluation; summary.md

Points run one after another. Nothing is trained twice: a stage of a point whose config and inputs
equal those of a stage finished in an earlier point (the test `rlft run` uses to skip) is
hard-linked from there (status "shared"; `run_pipeline(reuse=...)`). So a grid over
`stages.dpo.beta` trains SFT and the reward model once; over `data.curate.flip_fraction`, SFT once
and the reward model and DPO once per fraction. One folder per point (rather than one folder per
unique upstream config) keeps every point a complete, ordinary run that `rlft run` can resume or
extend, at the cost of links. Because the points share one cache and their upstream artifacts
(same content, same hash), a β or loss sweep computes the reference log-probs once.

When the pipeline has an `evaluate:` block, each finished point is evaluated (`rlft eval`, two
samples per prompt; `--no-eval` skips it) before the report, so that the report can place every
point's policies by reward and KL from their baseline. A stage a point shares with an earlier one
(same weights, same baseline, same reward model) is measured once and its row reused.

The table has a column per grid key and, for each stage the grid changes (a stage a key
addresses, or one that starts from such a stage), its final metrics: task_reward,
reward_accuracy, train/loss, rewards/margins, ...
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlft import yamlio
from rlft.errors import ConfigError, RlftError

# Final metrics a sweep table shows, per changed stage, when some point has them.
METRICS = (
    "task_reward",
    "reward_accuracy",
    "train/loss",
    "eval/loss",
    "rewards/margins",
    "rewards/accuracies",
    "eval/rewards/margins",
    "eval/rewards/accuracies",
    "kl",
)
# The metrics the printed table shows (sweep.csv has all of METRICS), with short headers.
PRINTED = {
    "task_reward": "task reward",
    "reward_accuracy": "RM acc",
    "train/loss": "train loss",
    "rewards/margins": "margin",
}


@dataclass
class Point:
    """One point of the grid: its values, its run folder and, once run, what its stages did."""

    name: str
    values: dict[str, Any]  # grid key -> value
    run_dir: Path
    status: str = "not run"  # done, failed
    seconds: float = 0.0
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> {status, metrics}
    error: str | None = None


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """`KEY=[v1, v2]` strings -> {key: [values]} (values parsed as YAML, as `--set` does)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        try:
            values = yamlio.safe_load(text) if sep else None
        except yaml.YAMLError as e:
            raise RlftError(f"--grid {item}: the values are not valid YAML: {e}") from None
        if not key or not isinstance(values, list) or not values:
            raise RlftError(f"--grid {item}: write KEY=[V1,V2,...], e.g. --grid 'stages.dpo.beta=[0.05,0.1]'")
        if key in grid:
            raise RlftError(f"--grid {key}: given twice; put all its values in one list")
        grid[key] = values
    if not grid:
        raise RlftError("rlft sweep needs at least one --grid KEY=[V1,V2,...]")
    return grid


def points(grid: dict[str, list[Any]], root: Path) -> list[Point]:
    """Every combination of the grid's values, named after them (short key names where unique)."""
    keys = list(grid)
    labels = short_labels(keys)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        name = ",".join(f"{label}={_format(v)}" for label, v in zip(labels, combo, strict=True))
        name = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", name)
        out.append(Point(name=name, values=dict(zip(keys, combo, strict=True)), run_dir=root / name))
    return out


def short_labels(keys: list[str]) -> list[str]:
    """The last part of each key (`beta` for stages.dpo.beta), or the whole keys when those collide."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    return short if len(set(short)) == len(short) else keys


def _format(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(_format(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}-{_format(v)}" for k, v in value.items())
    return str(value)


def changed_stages(pipeline: Any, keys: list[str]) -> list[str]:
    """Stages a grid can change: those its keys address (a top-level key: all), and every stage that
    starts from one of them ({from: ...} anywhere in its config)."""
    from rlft.pipeline_file import expand_override

    raw_stages = [{"name": s.name, "kind": s.kind} for s in pipeline.stages]
    addressed: set[str] = set()
    for key in keys:
        for expanded in expand_override({"stages": raw_stages}, key):
            parts = expanded.split(".")
            if parts[0] == "stages" and len(parts) > 2:
                addressed.add(parts[1])
            else:
                addressed.update(s.name for s in pipeline.stages)
    changed: list[str] = []
    for stage in pipeline.stages:
        refs = [ref for _, ref in stage.references()] + [ref for _, ref, _ in stage.data_references()]
        if stage.name in addressed or any(ref in changed for ref in refs):
            changed.append(stage.name)
    return changed


def run_sweep(
    path: Path,
    grid: dict[str, list[Any]],
    *,
    overrides: dict[str, Any] | None = None,
    sweep_dir: Path | None = None,
    force: bool = False,
    launch: str | None = None,
    console: Any = None,
    evaluate: bool = True,
) -> list[Point]:
    """Run every point of `grid` over the pipeline at `path`; write sweep.csv and sweep.json; print the
    table; evaluate the finished points (`evaluate`, when the pipeline has an `evaluate:` block) and write
    one report over them.

    Every point's config is validated before the first one runs. A failed point is recorded and
    the sweep goes on; RlftError is raised at the end if any point failed.
    """
    import sys

    from rich.console import Console

    from rlft.pipeline import StageFailed, run_pipeline
    from rlft.pipeline_file import load_pipeline

    console = console or Console(width=None if sys.stdout.isatty() else 120)
    base = load_pipeline(path, overrides=overrides)
    root = Path(sweep_dir or Path("runs") / f"{base.name}-sweep").resolve()
    todo = points(grid, root)
    pipelines = {}
    for point in todo:  # fail on any bad value before training anything
        try:
            pipelines[point.name] = load_pipeline(path, overrides={**(overrides or {}), **point.values})
        except ConfigError as e:
            raise ConfigError(f"sweep point {point.name}: {e}") from None
    changed = changed_stages(base, list(grid))

    root.mkdir(parents=True, exist_ok=True)
    previous_cache = os.environ.get("RLFT_CACHE_DIR")
    os.environ["RLFT_CACHE_DIR"] = previous_cache or str(root / "cache")  # stage processes inherit it
    try:
        for i, point in enumerate(todo):
            console.rule(f"[bold]sweep point {i + 1}/{len(todo)}: {point.name}[/]")
            start = time.time()
            try:
                outcomes = run_pipeline(
                    pipelines[point.name],
                    run_dir=point.run_dir,
                    force=force,
                    launch=launch,
                    console=console,
                    reuse=[p.run_dir for p in todo[:i]],
                )
                point.status = "done"
            except StageFailed as e:
                point.status, point.error = "failed", str(e)
                outcomes = []
                summary = json.loads((point.run_dir / "summary.json").read_text())
                point.stages = {x["stage"]: {"status": x["status"], "metrics": x} for x in summary}
            point.seconds = round(time.time() - start, 1)
            for o in outcomes:
                point.stages[o.name] = {"status": o.status, "metrics": o.record.get("metrics") or {}}
    finally:
        if previous_cache is None:
            os.environ.pop("RLFT_CACHE_DIR", None)

    columns = table_columns(todo, changed)
    write_table(root, todo, list(grid), columns)
    print_table(console, todo, list(grid), columns, root)
    done = [p for p in todo if p.status == "done"]
    if done:
        _report(root, done, evaluate=evaluate and base.config.evaluate is not None, console=console)
    failed = [p.name for p in todo if p.status == "failed"]
    if failed:
        raise RlftError(
            f"{len(failed)} of {len(todo)} sweep points failed: {', '.join(failed)} (see their logs)"
        )
    return todo


def _report(root: Path, done: list[Point], *, evaluate: bool, console: Any) -> None:
    """Evaluate the finished points (when asked) and write root/report.html over them. The points'
    stages are done and kept whatever happens here, so a failure is a warning, as after `rlft run`."""
    import logging

    from rlft.report import write_report
    from rlft.run_evaluation import evaluate_run

    known: dict[str, dict[str, Any]] = {}  # a stage shared by several points is measured once
    try:
        for point in done:
            if evaluate:
                console.print(f"evaluating sweep point {point.name}")
                evaluate_run(point.run_dir, samples=2, known=known)
        console.print(
            f"sweep report: {write_report([p.run_dir for p in done], out=root / 'report.html')}",
            soft_wrap=True,
        )
    except Exception as e:  # noqa: BLE001 - the sweep's runs stand; say what to run by hand
        logging.getLogger(__name__).warning(
            f"sweep report not written ({type(e).__name__}: {e}); "
            f"try `rlft eval` on each point, then `rlft report {' '.join(str(p.run_dir) for p in done)} --out {root / 'report.html'}`"
        )


def table_columns(todo: list[Point], changed: list[str]) -> list[tuple[str, str]]:
    """(stage, metric) pairs that some point has, for the stages the grid changes."""
    return [
        (stage, metric)
        for stage in changed
        for metric in METRICS
        if any(metric in p.stages.get(stage, {}).get("metrics", {}) for p in todo)
    ]


def _header(stage: str, metric: str, columns: list[tuple[str, str]], *, short: bool = False) -> str:
    name = PRINTED.get(metric, metric) if short else metric
    one_stage = len({s for s, _ in columns}) == 1
    return name if one_stage else f"{stage}: {name}" if short else f"{stage}:{name}"


def rows(todo: list[Point], keys: list[str], columns: list[tuple[str, str]]) -> list[dict[str, Any]]:
    out = []
    for p in todo:
        row: dict[str, Any] = {"point": p.name, **{k: _format(p.values[k]) for k in keys}}
        for stage, metric in columns:
            row[_header(stage, metric, columns)] = p.stages.get(stage, {}).get("metrics", {}).get(metric)
        ran = [s for s, v in p.stages.items() if v["status"] == "ran"]
        row.update(status=p.status, ran=" ".join(ran), seconds=p.seconds, run_dir=str(p.run_dir))
        out.append(row)
    return out


def write_table(root: Path, todo: list[Point], keys: list[str], columns: list[tuple[str, str]]) -> None:
    from rlft.artifacts import write_json_atomic

    table = rows(todo, keys, columns)
    tmp = root / ".sweep.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    os.replace(tmp, root / "sweep.csv")
    write_json_atomic(
        root / "sweep.json",
        {"grid_keys": keys, "points": [{**r, "stages": p.stages} for r, p in zip(table, todo, strict=True)]},
    )


def print_table(
    console: Any, todo: list[Point], keys: list[str], columns: list[tuple[str, str]], root: Path
) -> None:
    from rich.table import Table

    shown = [(s, m) for s, m in columns if m in PRINTED]
    table = Table(title=f"rlft sweep: {root}", title_justify="left")
    for label in short_labels(keys):
        table.add_column(label)
    for stage, metric in shown:
        table.add_column(_header(stage, metric, columns, short=True), justify="right")
    for col in ("ran", "seconds", "status"):
        table.add_column(col, justify="right" if col == "seconds" else "left", no_wrap=col != "ran")
    for p in todo:
        cells = [_format(p.values[k]) for k in keys]
        for stage, metric in shown:
            value = p.stages.get(stage, {}).get("metrics", {}).get(metric)
            cells.append(f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value))
        ran = ",".join(s for s, v in p.stages.items() if v["status"] == "ran") or "-"
        color = "green" if p.status == "done" else "red"
        table.add_row(*cells, ran, f"{p.seconds:.1f}", f"[{color}]{p.status}[/]")
    if not console.is_terminal:  # a log: print the table whole rather than squeezed to 120 columns
        from rich.console import Console

        wide = console.measure(table, options=console.options.update_width(1000)).maximum
        console = Console(width=max(console.width, wide), file=console.file)
    console.print(table)
    console.print(f"sweep table: {root / 'sweep.csv'}")
