"""`rlft data inspect`: load a data source the way a stage would, and report on it.

```
rlft data inspect configs/data/quickstart/prefs_train.jsonl --format preference
rlft data inspect qa.csv --field prompt=question --field completion=answer --tokenizer runs/x/sft --max-length 512
```

The source goes through `load_stage_data` (so the same files, formats, field mapping and row
checks as a training run), with `on_invalid: skip`: invalid rows are counted and written to
`<out>/rejects.jsonl` rather than stopping the report. Implicit preference data gets its prompt
extracted, as the preference stages do, and the report says so. The report is printed and
written to `<out>/data_report.json` and `<out>/data_lengths.png`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from rlft.data.config import DataConfig
from rlft.data.formats import FORMATS, convert
from rlft.data.report import data_report, print_report, write_report
from rlft.data.stage import load_stage_data
from rlft.errors import DataError, RlftError

if TYPE_CHECKING:
    from rich.console import Console

# --format NAME -> the formats accepted (implicit preference is preference without a prompt column)
INSPECT_FORMATS: dict[str, tuple[str, ...]] = {
    "preference": ("preference", "implicit_preference"),
    "prompt_completion": ("prompt_completion",),
    "language_modeling": ("language_modeling",),
    "unpaired_preference": ("unpaired_preference",),
    "contrastive": ("contrastive",),
}
DEFAULT_OUT = Path("data_report")
REJECTS = "rejects.jsonl"


def inspect_data(
    source: str,
    *,
    format: str | None = None,
    fields: Mapping[str, str] | None = None,
    tokenizer: str | None = None,
    category: str | None = None,
    max_length: int | None = None,
    out_dir: Path | str = DEFAULT_OUT,
    base_dir: Path | str = ".",
    console: Console | None = None,
) -> tuple[dict, list[Path]]:
    """Load `source`, print its report to `console` (None: print nothing) and write it to `out_dir`.
    Returns the report and the files written. Raises RlftError for bad input."""
    import pydantic

    if format is not None and format not in INSPECT_FORMATS:
        raise RlftError(f"--format {format}: choose one of {', '.join(INSPECT_FORMATS)}")
    fields = dict(fields or {})
    try:
        cfg = DataConfig(train=source, fields=fields, on_invalid="skip")
    except pydantic.ValidationError as e:
        raise RlftError(f"--field: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    out = Path(out_dir)
    formats = INSPECT_FORMATS[format] if format else tuple(FORMATS)
    with _quiet_datasets():
        try:
            data = load_stage_data(cfg, formats=formats, base_dir=base_dir, rejects_path=out / REJECTS)
        except DataError as e:  # say it in the command line's terms
            text = str(e).replace("the config file's folder", "the current folder")
            if "data.fields" in text:
                text += "\n(with rlft data inspect, map a column with --field CANONICAL=COLUMN)"
            raise DataError(text) from None
        report_in = dict(data.report)
        target = "preference" if data.format == "implicit_preference" else data.format
        train, note = convert(data.train, source=data.format, target=target)
        report_in["conversions"] = [*report_in["conversions"], *([f"data.train: {note}"] if note else [])]

        loaded = None
        if tokenizer is not None:
            loaded, fixups = _load_tokenizer(tokenizer)
            report_in["warnings"] = [*report_in["warnings"], *(f"tokenizer fix-up: {f}" for f in fixups)]
        report = data_report(
            train,
            format=target,
            style=data.report["style"],
            tokenizer=loaded,
            category_column=_category_column(category, fields, train.column_names),
            max_length=max_length,
            validation=report_in,
        )
    report = {"source": source, "tokenizer": tokenizer, **report}
    if report["invalid"] and report["invalid"]["rows"]:
        report["invalid"]["examples"] = _first_rejects(out / REJECTS)
    if data.format != target:
        report["format_loaded"] = data.format
    written = write_report(report, out)
    if console is not None:
        print_report(report, console)
        console.print(f"wrote {', '.join(str(p) for p in written)}", highlight=False)
    return report, written


def _first_rejects(path: Path, *, count: int = 5) -> list[str]:
    """The first rows of the rejects file as `row 4 of /abs/qa.jsonl (line 4): field 'answer' is empty`."""
    import json

    lines = []
    with open(path, encoding="utf-8") as f:
        for line, _ in zip(f, range(count), strict=False):
            r = json.loads(line)
            if "row" not in r:  # a curation record: {"step", "reason", "data", ...}
                lines.append(f"{r.get('step', 'dropped')}: {r.get('reason', '')}")
                continue
            where = f"row {r['row']} of {r['source']}" + (f" (line {r['line']})" if r.get("line") else "")
            lines.append(
                f"{where}: field {r['field']!r} {r['reason']}"
                if r.get("field")
                else f"{where}: {r['reason']}"
            )
    return lines


def _category_column(category: str | None, fields: Mapping[str, str], columns: list[str]) -> str | None:
    """The category column by the name it has after --field renamed columns."""
    if category is None or category in columns:
        return category
    renamed = {column: canonical for canonical, column in fields.items()}
    return renamed.get(category, category)


def _load_tokenizer(path: str):
    """The tokenizer as a stage loads it (with rlft's fix-ups: pad token, default chat template)."""
    from rlft.models.loading import ResolvedModel, load_tokenizer

    try:
        return load_tokenizer(ResolvedModel(path, description=f"tokenizer {path}"), log=lambda _: None)
    except (OSError, ValueError) as e:
        raise RlftError(f"--tokenizer {path}: cannot load a tokenizer from it: {e}") from None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No `datasets` progress bars while loading (the report is the output)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
