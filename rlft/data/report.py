"""The data report: what a dataset holds, before anything trains on it.

```python
report = data_report(data.train, format=data.format, style=data.report["style"], tokenizer=tokenizer,
                     max_length=512, validation=data.report)
print_report(report, Console())
write_report(report, stage_dir)      # data_report.json + data_lengths.png
```

It says: rows, fields and extra columns, format and style; length percentiles per field (in tokens
with a tokenizer, else in characters, and labelled so) with a histogram per field; exact
duplicates (rows whose format fields are equal after normalising text: whitespace runs collapsed,
ends stripped, case folded); invalid rows (from `load_stage_data`'s report); the balance of a
category column (counts and shares; for unpaired preference, of `label` by default); and, with
a tokenizer, the tokenisation checks of `rlft.data.tokenization`. Lengths and checks use a seeded
sample of at most SAMPLE_ROWS rows; duplicates and balance count every row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.data.formats import match_formats
from rlft.data.tokenization import SAMPLE_ROWS, SEQUENCE, length_stats, measure_tokens, sample_indices
from rlft.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from rich.console import Console

REPORT_JSON = "data_report.json"
LENGTHS_PNG = "data_lengths.png"
BATCH_ROWS = 1000  # rows read from Arrow at a time
MAX_CATEGORIES = 50  # categories listed in the balance; the rest are summed as "(other)"
HISTOGRAM_BINS = 30


def data_report(
    ds: Dataset,
    *,
    format: str,
    style: str,
    tokenizer: Any = None,
    category_column: str | None = None,
    max_length: int | None = None,
    validation: Mapping | None = None,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
) -> dict:
    """The report of `ds`, in format `format` (see the module doc), as a JSON-serialisable dict.

    validation: the report of `load_stage_data` (invalid rows, conversions, warnings, sources).
    """
    found = match_formats(ds.column_names, [format])
    if not found:
        raise ValueError(f"the columns {', '.join(ds.column_names)} do not make the format {format!r}")
    detected = found[0]
    indices = sample_indices(len(ds), limit=sample_rows, seed=seed)
    if tokenizer is not None:
        checks, raw = measure_tokens(
            ds,
            tokenizer,
            format=format,
            style=style,
            max_length=max_length,
            sample_rows=sample_rows,
            seed=seed,
        )
        unit = "tokens"
    else:
        checks, raw = None, _char_lengths(ds, indices, fields=detected.text_fields)
        unit = "characters"
    validation = validation or {}
    category_column = category_column or ("label" if format == "unpaired_preference" else None)
    return {
        "rows": len(ds),
        "format": format,
        "style": style,
        "fields": list(detected.fields),
        "extra_columns": [c for c in ds.column_names if c not in detected.fields],
        "sample": {"rows": len(indices), "of": len(ds), "sampled": len(indices) < len(ds), "seed": seed},
        "lengths": {
            "unit": unit,
            "fields": {name: length_stats(values) for name, values in raw.items()},
            "histograms": {name: histogram(values) for name, values in raw.items()},
            "max_length": max_length,
        },
        "duplicates": _duplicates(ds, detected.fields),
        "invalid": _invalid(validation),
        "balance": _balance(ds, category_column) if category_column else None,
        "tokenization": checks,
        "conversions": list(validation.get("conversions", [])),
        "warnings": list(validation.get("warnings", [])),
    }


def write_report(report: Mapping, out_dir: Path | str) -> list[Path]:
    """Write `data_report.json` and the length histograms `data_lengths.png` into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    _atomic_write(json_path, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode())
    png_path = out / LENGTHS_PNG
    _atomic_write(png_path, _lengths_png(report))
    return [json_path, png_path]


def print_report(report: Mapping, console: Console) -> None:
    """The report as rich tables: summary, lengths, balance, tokenisation checks, renders."""
    from rich.table import Table

    summary = Table(title="data", title_justify="left", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    sample = report["sample"]
    invalid = report["invalid"]
    duplicates = report["duplicates"]
    rows = [("source", str(report["source"]))] if report.get("source") else []
    rows += [
        ("rows", f"{report['rows']:,}"),
        ("format", f"{report['format']} ({report['style']})"),
        ("fields", ", ".join(report["fields"])),
        ("extra columns", ", ".join(report["extra_columns"]) or "-"),
        ("invalid rows", "-" if invalid is None else _invalid_text(invalid)),
        ("exact duplicates", f"{duplicates['rows']:,} ({duplicates['share']:.1%})"),
        (
            "lengths from",
            f"a seeded sample of {sample['rows']:,} rows (seed {sample['seed']})"
            if sample["sampled"]
            else f"all {sample['rows']:,} rows"
            if sample["rows"] != 1
            else "the one row",
        ),
    ]
    rows += [("converted", c) for c in report["conversions"]]
    rows += [("warning", w) for w in report["warnings"]]
    for row in rows:
        summary.add_row(*row)
    console.print(summary)
    for example in (invalid or {}).get("examples", []):
        console.print(f"[yellow]invalid:[/yellow] {example}", highlight=False)

    lengths = report["lengths"]
    table = Table(title=f"lengths in {lengths['unit']}", title_justify="left")
    for column in ("field", "p50", "p90", "p99", "max", "mean"):
        table.add_column(column, justify="left" if column == "field" else "right")
    for name, s in lengths["fields"].items():
        label = f"{name} (whole)" if name == SEQUENCE else name
        table.add_row(label, *(str(s[k]) for k in ("p50", "p90", "p99", "max", "mean")))
    console.print(table)

    if report["balance"]:
        balance = report["balance"]
        table = Table(title=f"balance of {balance['column']!r}", title_justify="left")
        for column in ("value", "rows", "share"):
            table.add_column(column, justify="left" if column == "value" else "right")
        for value, count in balance["counts"].items():
            table.add_row(value, f"{count:,}", f"{balance['shares'][value]:.1%}")
        console.print(table)

    checks = report["tokenization"]
    if checks:
        from rlft.data.tokenization import log_lines

        table = Table(title="tokenisation checks", title_justify="left", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("BOS / EOS", f"{checks['bos_token']!r} / {checks['eos_token']!r}")
        if checks["bos_token"] is not None:
            table.add_row("doubled BOS", _flag(checks["doubled_bos"], checks["rows_checked"]))
        if checks["prefix_checked"]:
            table.add_row(
                "prompt not a token prefix", _flag(checks["prefix_mismatch"], checks["prefix_checked"])
            )
        if checks["max_length"] is not None:
            table.add_row(
                f"longer than max_length {checks['max_length']}",
                _flag(checks["over_max_length"], checks["rows_checked"]),
            )
            if checks["prompt_over_max_length"] is not None:
                table.add_row(
                    "prompt alone fills max_length",
                    _flag(checks["prompt_over_max_length"], checks["rows_checked"]),
                )
        console.print(table)
        for line in log_lines(checks):
            if line.startswith("WARNING"):
                console.print(f"[yellow]{line}[/yellow]", highlight=False)
        for render in checks["renders"]:
            for name, text in render.items():
                if name != "row":
                    console.rule(f"row {render['row']}, {name}, as the model sees it", align="left")
                    console.print(text, markup=False, highlight=False)
        if checks["renders"]:
            console.rule()


# --- pieces -----------------------------------------------------------------------------------


def histogram(values: list[float], *, bins: int = HISTOGRAM_BINS) -> dict:
    """{edges, counts}: at most `bins` equal-width bins. For integers, bins never split a value and
    are centred on them (a bin of width 1 for the value v spans v - 0.5 to v + 0.5)."""
    if not values:
        return {"edges": [], "counts": []}
    low, high = min(values), max(values)
    if all(isinstance(v, int) for v in values):
        width = max(1, math.ceil((high - low + 1) / bins))
        edges = [low - 0.5 + i * width for i in range(math.ceil((high - low + 1) / width) + 1)]
    else:
        width = (high - low) / bins or 1.0
        edges = [low + i * width for i in range(bins + 1)]
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(int((v - low) // width), len(counts) - 1)] += 1
    return {"edges": edges, "counts": counts}


def _char_lengths(ds: Dataset, indices: list[int], *, fields: tuple[str, ...]) -> dict[str, list[int]]:
    """Characters per text field (of a conversation: its messages' contents), and of the whole row:
    prompt + its longest answer, or the longest field when there is no prompt."""
    rows = ds.select_columns(list(fields)).select(indices).to_list()
    lengths: dict[str, list[int]] = {f: [] for f in fields}
    lengths[SEQUENCE] = []
    for row in rows:
        sizes = {f: _chars(row[f]) for f in fields}
        for f, n in sizes.items():
            lengths[f].append(n)
        answers = [n for f, n in sizes.items() if f != "prompt"]
        lengths[SEQUENCE].append(sizes.get("prompt", 0) + max(answers) if "prompt" in sizes else max(answers))
    return lengths


def _chars(value: object) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(m.get("content") or "") for m in value if isinstance(m, Mapping))
    return 0


def _normalised(value: object) -> object:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normalised(v) for k, v in sorted(value.items())}
    return value


def _duplicates(ds: Dataset, fields: tuple[str, ...]) -> dict:
    """Rows equal to an earlier row in every format field, after normalising text. Every row."""
    seen: set[bytes] = set()
    duplicates = 0
    for batch in ds.select_columns(list(fields)).iter(batch_size=BATCH_ROWS):
        for j in range(len(batch[fields[0]])):
            key = json.dumps([_normalised(batch[f][j]) for f in fields], ensure_ascii=False, default=str)
            digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
            duplicates += digest in seen
            seen.add(digest)
    return {
        "rows": duplicates,
        "share": duplicates / len(ds) if len(ds) else 0.0,
        "fields": list(fields),
        "normalised": "whitespace runs collapsed, ends stripped, case folded",
    }


def _invalid(validation: Mapping) -> dict | None:
    """Invalid rows as `load_stage_data` reported them; None without a validation report."""
    if "rows_rejected" not in validation:
        return None
    read = sum((validation.get(split) or {}).get("rows_read", 0) for split in ("train", "eval"))
    return {
        "rows": validation["rows_rejected"],
        "of": read,
        "on_invalid": validation.get("on_invalid"),
        "rejects_path": validation.get("rejects_path"),
    }


def _balance(ds: Dataset, column: str) -> dict:
    """Rows per value of `column`, most frequent first, with shares; values beyond MAX_CATEGORIES
    are summed as "(other)"."""
    if column not in ds.column_names:
        raise DataError(
            f"category column {column!r} is not in the data; its columns are {', '.join(ds.column_names)}"
        )
    counts: Counter[str] = Counter()
    for batch in ds.select_columns([column]).iter(batch_size=BATCH_ROWS):
        counts.update(_category(v) for v in batch[column])
    ranked = counts.most_common()
    shown = dict(ranked[:MAX_CATEGORIES])
    if len(ranked) > MAX_CATEGORIES:
        shown["(other)"] = sum(n for _, n in ranked[MAX_CATEGORIES:])
    total = sum(counts.values())
    return {
        "column": column,
        "categories": len(counts),
        "counts": shown,
        "shares": {k: n / total for k, n in shown.items()},
    }


def _category(value: object) -> str:
    if value is None:
        return "(null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _invalid_text(invalid: Mapping) -> str:
    text = f"{invalid['rows']:,} of {invalid['of']:,} read"
    if invalid["rows"] and invalid["rejects_path"]:
        text += f" (written to {invalid['rejects_path']})"
    return text


def _flag(count: int, of: int) -> str:
    text = f"{count:,} of {of:,} rows"
    return f"[yellow]{text}[/yellow]" if count else f"[green]{text}[/green]"


def _lengths_png(report: Mapping) -> bytes:
    """One histogram panel per field (drawn from the report's histograms), as PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    lengths = report["lengths"]
    panels = [(name, h) for name, h in lengths["histograms"].items() if h["counts"]]
    columns = 2 if len(panels) == 4 else min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    sample = report["sample"]
    scope = (
        f"sample of {sample['rows']:,} of {sample['of']:,} rows"
        if sample["sampled"]
        else f"{sample['rows']:,} rows"
    )
    figure.suptitle(f"{report['format']} ({report['style']}): lengths in {lengths['unit']}, {scope}")
    for i, (name, h) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        edges, counts = h["edges"], h["counts"]
        widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        axes.bar(
            edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white", linewidth=0.5
        )
        stats = lengths["fields"][name]
        for key, style in (("p50", "--"), ("p99", ":")):
            axes.axvline(stats[key], color="black", linestyle=style, linewidth=1, label=f"{key} {stats[key]}")
        if name == SEQUENCE and lengths["max_length"] is not None and lengths["unit"] == "tokens":
            axes.axvline(
                lengths["max_length"],
                color="#c44e52",
                linewidth=1.5,
                label=f"max_length {lengths['max_length']}",
            )
        axes.set_title("whole sequence" if name == SEQUENCE else name)
        axes.set_xlabel(lengths["unit"])
        axes.set_ylabel("rows")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize="small", framealpha=0.8)
    if not panels:
        figure.text(0.5, 0.5, "no lengths", ha="center")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
