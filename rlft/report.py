"""`rlft report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page (and a summary.md) about runs.

What it shows, from what the run folders hold (nothing is recomputed):

    the pipeline       each stage in order: kind, status, what it started from, seconds, world size, data hashes
    curves             per stage, from metrics.jsonl: losses; chosen/rejected rewards and margins;
                       PPO/GRPO score, KL, entropy, beta; learning rate
    evaluation         eval.json (`rlft eval`): the table (a reward model's reliability table too), and
                       reward against KL across the policy stages of every run given, with their Pareto
                       frontier (several runs, e.g. a sweep's points, draw a frontier)
    samples            each stage's greedy samples (stage.json), side by side by prompt
    data               each stage's data_lengths.png and rejected-row counts (data_report.json)

Plots are matplotlib PNGs embedded as data URIs: one file to attach or mail.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from rlft.artifacts import read_json
from rlft.errors import RlftError
from rlft.tracking import read_metrics

# Curves drawn per stage, when its metrics.jsonl has them: a title -> the metric names on one plot.
CURVES = {
    "loss": ("train/loss", "eval/loss", "ppo/loss", "ppo/policy_loss", "ppo/value_loss"),
    "rewards": ("rewards/chosen", "rewards/rejected", "rewards/margins", "ppo/score", "train/reward"),
    "KL and entropy": ("ppo/kl", "train/kl", "ppo/entropy", "train/entropy", "ppo/beta"),
    "learning rate": ("train/learning_rate", "ppo/lr"),
}
EVAL_COLUMNS = {
    "stage": "stage",
    "baseline": "baseline",
    "task_reward": "task reward",
    "task_reward_sampled": "sampled",
    "rm_score": "RM score",
    "win_rate": "win rate",
    "lc_win_rate": "LC win rate",
    "judge_win_rate": "judge win rate",
    "kl": "KL",
    "mean_length": "length",
    "perplexity": "perplexity",
    "preference_accuracy": "pref. acc.",
    "pair_accuracy": "RM pair acc.",
    "ece": "RM ECE",
    "retrieval_accuracy": "retrieval@1",
}
RELIABILITY_COLUMNS = {
    "low": "confidence from",
    "high": "to",
    "n": "pairs",
    "confidence": "mean confidence",
    "accuracy": "accuracy",
}


def write_report(runs: list[str | Path], *, out: str | Path | None = None) -> Path:
    """Write report.html (and summary.md beside it) for `runs`; by default into the first run's folder."""
    folders = [Path(r) for r in runs]
    for folder in folders:
        if read_json(folder / "summary.json") is None:
            raise RlftError(f"{folder}: no summary.json here; give the folder of a run (runs/<pipeline>)")
    out = Path(out) if out is not None else folders[0] / "report.html"
    sections = [_run_section(folder) for folder in folders]
    frontier = _frontier(folders)
    title = "rlft report: " + ", ".join(f.name for f in folders)
    body = "".join([f"<h1>{_e(title)}</h1>", frontier, *sections])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.format(title=_e(title), body=body))
    (out.parent / "summary.md").write_text(_summary_md(folders))
    return out


def _run_section(run: Path) -> str:
    summary = read_json(run / "summary.json") or []
    records = {e["stage"]: read_json(run / e["stage"] / "stage.json") or {} for e in summary}
    parts = [
        f"<h2>run {_e(run.name)} <small>{_e(str(run))}</small></h2>",
        "<h3>pipeline</h3>",
        _lineage(summary, records),
    ]
    evaluation = read_json(run / "eval.json")
    if evaluation:
        parts += ["<h3>evaluation (rlft eval)</h3>", _table(evaluation, EVAL_COLUMNS)]
        for row in evaluation:
            if row.get("reliability"):
                parts += [
                    f"<h4>reliability of reward model {_e(row['stage'])} on held-out pairs (ECE {row['ece']:.4g})</h4>",
                    _table(row["reliability"], RELIABILITY_COLUMNS),
                ]
    for entry in summary:
        name, record = entry["stage"], records[entry["stage"]]
        curves = _curves(read_metrics(run / name / "metrics.jsonl"))
        data = _data(run / name)
        samples = (record.get("info") or {}).get("samples") or []
        if not (curves or data or samples):
            continue
        parts.append(f"<h3>stage {_e(name)} ({_e(entry['kind'])})</h3>")
        parts += curves + data
        if samples:
            shown = [{**sample, "prompt": _prompt_text(sample.get("prompt"))} for sample in samples]
            parts.append(_table(shown, {"prompt": "prompt", "completion": "completion", "reward": "reward"}))
    parts.append(_side_by_side(records))
    return "<section>" + "".join(parts) + "</section>"


def _lineage(summary: list[dict[str, Any]], records: dict[str, dict[str, Any]]) -> str:
    rows = []
    for entry in summary:
        record = records[entry["stage"]]
        config = record.get("config") or {}
        model = config.get("model") or {}
        start = (
            f"stage {model['from']}" if isinstance(model, dict) and model.get("from") else _describe(model)
        )
        data = (record.get("inputs") or {}).get("data") or {}
        rows.append(
            {
                "stage": entry["stage"],
                "kind": entry["kind"],
                "status": entry.get("status"),
                "starts from": start,
                "seconds": entry.get("seconds"),
                "world size": record.get("world_size"),
                "data": ", ".join(f"{Path(p).name} {h[:8]}" for p, h in data.items()) or "-",
                "task reward": entry.get("task_reward"),
            }
        )
    return _table(rows, {k: k for k in rows[0]} if rows else {})


def _describe(model: Any) -> str:
    if not isinstance(model, dict) or not model:
        return "-"
    if model.get("tiny"):
        return "tiny model (built)"
    return str(model.get("path") or model.get("hub") or model.get("package") or "-")


def _curves(metrics: list[dict[str, Any]]) -> list[str]:
    images = []
    for title, names in CURVES.items():
        series = {
            n: [
                (m["step"], m[n])
                for m in metrics
                if isinstance(m.get(n), int | float) and math.isfinite(m[n])
            ]
            for n in names
        }
        series = {n: points for n, points in series.items() if points}
        if not series:
            continue
        figure, axes = _figure()
        for name, points in series.items():
            axes.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="." if len(points) < 30 else None,
                label=name,
            )
        axes.set_title(title)
        axes.set_xlabel("step")
        axes.legend(fontsize=8)
        images.append(_image(figure, title))
    return images


def _data(stage: Path) -> list[str]:
    parts = []
    lengths = stage / "data_lengths.png"
    if lengths.is_file():
        encoded = base64.b64encode(lengths.read_bytes()).decode()
        parts.append(f'<img alt="data lengths" src="data:image/png;base64,{encoded}">')
    report = read_json(stage / "data_report.json")
    if report:
        rejects = report.get("rejects") or report.get("rejected") or {}
        count = sum(rejects.values()) if isinstance(rejects, dict) else rejects
        parts.append(
            f"<p>data: {_e(str(report.get('rows', '?')))} training rows, {_e(str(count or 0))} rejected</p>"
        )
    return parts


def _side_by_side(records: dict[str, dict[str, Any]]) -> str:
    """The greedy samples every stage recorded, one row per prompt, one column per stage."""
    by_prompt: dict[str, dict[str, str]] = {}
    for name, record in records.items():
        for sample in (record.get("info") or {}).get("samples") or []:
            prompt = (
                sample["prompt"] if isinstance(sample["prompt"], str) else sample["prompt"][-1]["content"]
            )
            by_prompt.setdefault(prompt, {})[name] = str(sample.get("completion"))
    if not by_prompt:
        return ""
    stages = [n for n in records if any(n in row for row in by_prompt.values())]
    rows = [{"prompt": p, **{s: row.get(s, "") for s in stages}} for p, row in by_prompt.items()]
    return "<h3>samples side by side (greedy)</h3>" + _table(
        rows, {"prompt": "prompt", **{s: s for s in stages}}
    )


def _prompt_text(prompt: Any) -> str:
    """A prompt as text: a conversation by its last message's content."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return str(prompt)


# the frontier's reward, best first: the verifier on the samples the KL is measured on (the DPO
# paper's Figure 2: the true reward of samples), the verifier on greedy answers, the reward model's score
FRONTIER_REWARDS = {
    "task_reward_sampled": "task reward, sampled",
    "task_reward": "task reward, greedy",
    "rm_score": "reward-model score, greedy",
}


def frontier_points(runs: list[Path]) -> tuple[list[tuple[str, str, float, float, float]], str]:
    """(run, stage, KL, reward, KL stderr) for every evaluated policy stage of every run, and the name
    of the reward: the first of FRONTIER_REWARDS that every stage with a KL has (one measure on the axis).
    A stage that several runs share (a sweep links it, its row is reused) is one point, the first run's."""
    rows = [
        (run.name, row)
        for run in runs
        for row in read_json(run / "eval.json") or []
        if isinstance(row.get("kl"), int | float)
    ]
    for key, label in FRONTIER_REWARDS.items():
        if rows and all(isinstance(row.get(key), int | float) for _, row in rows):
            points: dict[tuple[str, float, float], tuple[str, str, float, float, float]] = {}
            for run, row in rows:  # the first run that has the stage keeps it
                point = (run, row["stage"], row["kl"], row[key], row.get("kl_stderr") or 0.0)
                points.setdefault(point[1:4], point)
            return list(points.values()), label
    return [], ""


def _frontier(runs: list[Path]) -> str:
    """Reward against KL for every evaluated policy stage of every run: the DPO paper's Figure 2 view."""
    points, reward_name = frontier_points(runs)
    if not points:
        return ""
    figure, axes = _figure()
    figure.set_size_inches(8, 3.5)  # room for the legend beside the plot
    for label in sorted({(p[0], p[1]) for p in points}):
        chosen = [p for p in points if (p[0], p[1]) == label]
        axes.errorbar(
            [p[2] for p in chosen],
            [p[3] for p in chosen],
            xerr=[p[4] for p in chosen],
            fmt="o",
            label=" / ".join(label),
        )
    front = pareto_front([(p[2], p[3]) for p in points])
    if len(front) > 1:
        axes.step(
            [points[i][2] for i in front],
            [points[i][3] for i in front],
            where="post",
            linestyle="--",
            color="gray",
            label="frontier",
        )
    axes.set_xlabel("KL from the baseline (nats per response)")
    axes.set_ylabel(reward_name)
    axes.set_title("reward against KL")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the plot, not on it
    return "<h2>reward against KL</h2>" + _image(figure, "reward against KL")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (KL, reward) points no other point beats on both (as low a KL, as high a reward,
    one of them strictly), by increasing KL: the best reward each KL budget buys."""
    front: list[int] = []
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 3.5))
    return figure, figure.add_subplot()


def _image(figure: Any, alt: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{encoded}">'


def _table(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    head = "".join(f"<th>{_e(label)}</th>" for label in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(_cell(row.get(key)))}</td>" for key in columns) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _summary_md(runs: list[Path]) -> str:
    lines = ["# rlft report", ""]
    for run in runs:
        lines += [
            f"## {run.name}",
            "",
            "| stage | kind | status | seconds | task reward |",
            "| --- | --- | --- | --- | --- |",
        ]
        for e in read_json(run / "summary.json") or []:
            lines.append(
                f"| {e['stage']} | {e['kind']} | {e.get('status')} | {_cell(e.get('seconds'))} | {_cell(e.get('task_reward'))} |"
            )
        lines.append("")
        evaluation = read_json(run / "eval.json")
        if evaluation:  # only the columns some row has
            shown = {
                k: v for k, v in EVAL_COLUMNS.items() if any(row.get(k) is not None for row in evaluation)
            }
            lines += [
                "evaluation (rlft eval):",
                "",
                "| " + " | ".join(shown.values()) + " |",
                "| " + " | ".join("---" for _ in shown) + " |",
                *("| " + " | ".join(_cell(row.get(k)) for k in shown) + " |" for row in evaluation),
                "",
            ]
    return "\n".join(lines)


# The page marks itself once every image has decoded (`data-images-loaded`): what the report's test
# reads back from headless Chromium.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1300px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #f2f2f2; }}
img {{ max-width: 640px; margin: 0.25em 1em 0.25em 0; vertical-align: top; }}
small {{ color: #777; font-weight: normal; }}
</style></head>
<body>{body}
<script>
window.addEventListener("load", () => {{
  const images = [...document.images];
  document.body.dataset.imagesLoaded = String(images.length > 0 && images.every(i => i.complete && i.naturalWidth > 0));
  document.body.dataset.tables = String(document.querySelectorAll("table").length);
}});
</script>
</body></html>
"""
