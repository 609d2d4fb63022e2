"""`load_stage_data`: a stage's `data:` section in, validated train/eval datasets and a report out.

Order of work, each step a function below:
1. load every source (memory-mapped) and rename your columns with `fields`;
2. detect the format, the same for every source, among the formats the stage accepts;
3. pick the train rows: weighted sampling and/or `max_rows` (rows read, before checks);
4. check every row; invalid rows stop the run or go to the rejects file;
5. concatenate the sources; split `eval_fraction` off train when there is no eval source
   (seeded, optionally stratified: rlft.data.split);
6. curate the train rows (`curate:`, all steps off by default: rlft.data.curate);
7. decontaminate: drop train rows whose prompt overlaps an eval prompt (`decontaminate:`, on by
   default when there is an eval set: rlft.data.split).
Rows dropped in steps 4, 6 and 7 go to one rejects file, never silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlft.data.config import DataConfig, SourceSpec, as_sources
from rlft.data.curate import curate, drop_rows
from rlft.data.formats import (
    CONVERSATIONAL,
    FORMATS,
    OPTIONAL_FIELDS,
    STANDARD,
    Detected,
    describe_formats,
    detect_format,
    detected_style,
    match_formats,
    value_style,
)
from rlft.data.sources import LoadedSource, load_source
from rlft.data.split import find_contaminated, split_eval
from rlft.data.validate import Rejects, column_in_use, find_invalid, invalid_rows_error
from rlft.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass
class StageData:
    """What a stage trains and evaluates on."""

    train: Dataset
    eval: Dataset | None
    format: str  # one of rlft.data.formats.FORMATS, e.g. "prompt_completion"
    report: dict  # JSON-serialisable: rows per source, rejected, conversions; see load_stage_data

    @property
    def conversational(self) -> bool:
        """True when the text fields are lists of messages (TRL applies the chat template)."""
        return self.report["style"] == CONVERSATIONAL


def load_stage_data(
    cfg: DataConfig,
    *,
    formats: tuple[str, ...],
    base_dir: Path | str = ".",
    rejects_path: Path | None = None,
    section: str = "data",
    tokenizer: Any = None,
) -> StageData:
    """Load, check and split a stage's data.

    formats: the formats the stage accepts, e.g. ("language_modeling", "prompt_completion").
    base_dir: the folder relative source paths start from (the YAML file's folder).
    rejects_path: where dropped rows go (JSONL, replaced on every call): invalid rows with
        on_invalid="skip", and rows removed by curation and decontamination; with rows to drop
        and no path, this raises rather than drop them silently.
    section: the key path of `cfg` in the config, used in messages ("data", "stages.sft.data").
    tokenizer: the stage's tokenizer, for curate.length (token counts) and curate.drop_identical_pairs
        (comparing rendered chat templates); None when the stage has none.

    The report holds: format, style, fields (the columns the format uses), extra_columns (kept),
    conversions (column renames), warnings, on_invalid, rejects_path and rows_rejected, and
    per split (train, eval) rows, rows_loaded, rows_read, rows_rejected and one entry per source;
    curation: one entry per curation step run, {"step", "removed", "rows_after", ...details};
    decontamination: {"compared", "exact", "ngram", "ngram_size", "removed", "rows_after"}, or None when it did
    not run (no eval set, or decontaminate: null).
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}, got {formats!r}")
    base = Path(base_dir).expanduser().resolve()
    train_parts = _load_parts(cfg.train, cfg, key=f"{section}.train", base_dir=base, section=section)
    eval_parts = _load_parts(cfg.eval, cfg, key=f"{section}.eval", base_dir=base, section=section)
    detected, style, warnings = _settle_format(train_parts + eval_parts, formats, section=section)
    _pick_train_rows(train_parts, max_rows=cfg.max_rows, seed=cfg.seed)

    has_eval = bool(eval_parts) or cfg.eval_fraction > 0
    removes_rows = bool(cfg.curate.steps()) or (cfg.decontaminate is not None and has_eval)
    writes_rejects = rejects_path is not None and (cfg.on_invalid == "skip" or removes_rows)
    with Rejects(rejects_path) if writes_rejects else contextlib.nullcontext() as rejects:
        check = dict(detected=detected, style=style, cfg=cfg, rejects=rejects, section=section)
        train = _checked(train_parts, key=f"{section}.train", **check)
        evaluation = _checked(eval_parts, key=f"{section}.eval", **check) if eval_parts else None
        eval_report = _split_report(eval_parts)
        if evaluation is None and cfg.eval_fraction > 0:
            train, evaluation, eval_report = split_eval(
                train, fraction=cfg.eval_fraction, seed=cfg.seed, stratify_by=cfg.stratify_by, section=section
            )
            eval_report = {"rows": len(evaluation), **eval_report}
        elif evaluation is not None:
            eval_report["rows"] = len(evaluation)
        rows_split = len(train)
        train, curation = curate(
            train,
            cfg.curate,
            format=detected.format,
            style=style,
            seed=cfg.seed,
            tokenizer=tokenizer,
            rejects=rejects,
            section=section,
        )
        decontamination = None
        if evaluation is not None and cfg.decontaminate is not None:
            train, decontamination = _decontaminate(
                train, evaluation, cfg=cfg, format=detected.format, rejects=rejects, section=section
            )
            if "warning" in decontamination:
                warnings.append(decontamination["warning"])

    train_report = _split_report(train_parts)
    train_report["rows"] = len(train)
    train_report["rows_before_curation"] = rows_split
    report = {
        "format": detected.format,
        "style": style,
        "fields": list(detected.fields),
        "extra_columns": [c for c in train.column_names if c not in detected.fields],
        "conversions": [
            f"{p.key}: renamed column {column!r} to {canonical!r} ({section}.fields.{canonical})"
            for p in train_parts + eval_parts
            for column, canonical in p.renamed.items()
        ],
        "warnings": warnings,
        "on_invalid": cfg.on_invalid,
        "rejects_path": str(rejects_path) if writes_rejects else None,
        "rows_rejected": sum(p.rows_rejected for p in train_parts + eval_parts),
        "train": train_report,
        "eval": eval_report,
        "curation": curation,
        "decontamination": decontamination,
    }
    return StageData(train=train, eval=evaluation, format=detected.format, report=report)


def _load_parts(
    spec: SourceSpec | None, cfg: DataConfig, *, key: str, base_dir: Path, section: str
) -> list[LoadedSource]:
    sources = as_sources(spec)
    keys = [f"{key}[{i}]" for i in range(len(sources))] if isinstance(spec, list) else [key] * len(sources)
    return [
        load_source(s, key=k, base_dir=base_dir, fields=cfg.fields, section=section)
        for s, k in zip(sources, keys, strict=True)
    ]


# --- format ---------------------------------------------------------------------------------


def _settle_format(
    parts: list[LoadedSource], formats: Sequence[str], *, section: str
) -> tuple[Detected, str, list[str]]:
    """The one (format, style) of all sources, and warnings. Raises DataError naming the source
    that makes no accepted format, or that differs from the first."""
    settled: tuple[Detected, str, LoadedSource] | None = None
    warnings: list[str] = []
    for part in parts:
        columns = part.dataset.column_names
        detected = detect_format(columns, formats)
        if detected is None:
            raise _no_format_error(part, formats, section=section)
        shadowing = [m for m in match_formats(columns) if m.format not in formats]
        shadowing = [m for m in shadowing if set(m.fields) > set(detected.fields)]
        for m in shadowing:
            extra = ", ".join(sorted(set(m.fields) - set(detected.fields)))
            warnings.append(
                f"{part.key}: the columns of {part.resolved.label} also make {m.format} ({', '.join(m.fields)}), "
                f"which this stage does not accept; it is read as {detected.format} and {extra} is kept "
                "as an extra column"
            )
            logger.warning(warnings[-1])
        style = _style(part, detected)
        if settled is None:
            settled = (detected, style, part)
        elif (detected, style) != settled[:2]:
            first = settled[2]
            raise DataError(
                f"{part.key}: {part.resolved.label} is {_describe(detected, style)}, but {first.key} "
                f"({first.resolved.label}) is {_describe(*settled[:2])}; all sources of a stage must share "
                "one format and style"
            )
    assert settled is not None, "a DataConfig always has a train source"
    return settled[0], settled[1], warnings


def _describe(detected: Detected, style: str) -> str:
    return f"{style} {detected.format} ({', '.join(detected.fields)})"


def _style(part: LoadedSource, detected: Detected) -> str:
    """STANDARD or CONVERSATIONAL, from the column types, else from the first row."""
    from datasets import LargeList, List, Value

    styles: dict[str, str | None] = {}
    for name in detected.text_fields:
        feature = part.dataset.features[name]
        if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
            styles[name] = STANDARD
        elif isinstance(feature, List | LargeList):
            styles[name] = CONVERSATIONAL
        else:  # e.g. Json (mixed types in the file): the rows decide
            styles[name] = None
    try:
        style = detected_style(detected, styles)
    except ValueError as e:
        raise DataError(f"{part.key}: in {part.resolved.label}, {e}") from e
    if style is None:
        first = part.dataset.select_columns(list(detected.text_fields))[0]
        found = [value_style(first[f]) for f in detected.text_fields if value_style(first[f])]
        style = found[0] if found else STANDARD
    return style


def _no_format_error(part: LoadedSource, formats: Sequence[str], *, section: str) -> DataError:
    columns = part.dataset.column_names
    other = [m.format for m in match_formats(columns) if m.format not in formats]
    lines = [
        f"{part.key}: {part.resolved.label} has columns {', '.join(columns)}, which make none of the "
        "formats this stage accepts:",
        describe_formats(formats),
    ]
    if other:
        lines.append(f"(they make {', '.join(other)}, which this stage does not accept)")
    lines.append(
        f"Name your columns with {section}.fields, e.g. {section}.fields: {_fields_example(columns, formats)}"
    )
    return DataError("\n".join(lines))


def _fields_example(columns: list[str], formats: Sequence[str]) -> str:
    """A guess at the mapping: the accepted column set closest to being present, its missing
    fields paired in order with the columns that are not canonical yet."""
    canonical = {f for sets in FORMATS.values() for s in sets for f in s}
    free = [c for c in columns if c not in canonical]
    candidates = [s for name in formats for s in FORMATS[name]]

    def closeness(fields: tuple[str, ...]) -> tuple[bool, int, int]:
        missing = [f for f in fields if f not in columns]
        return len(missing) <= len(free), len(fields) - len(missing), len(fields)

    fields = max(candidates, key=closeness)
    missing = [f for f in fields if f not in columns]
    pairs = [f"{f}: {free[i] if i < len(free) else '<your column>'}" for i, f in enumerate(missing)]
    return "{" + ", ".join(pairs) + "}"


# --- rows -----------------------------------------------------------------------------------


def _pick_train_rows(parts: list[LoadedSource], *, max_rows: int | None, seed: int) -> None:
    """Weights: sample each source (seeded, without replacement) to its share of the largest
    mix no source runs out of, capped at max_rows. No weights: the first max_rows rows."""
    if all(p.source.weight is not None for p in parts) and len(parts) > 1:
        total_weight = sum(p.source.weight for p in parts)
        shares = [p.source.weight / total_weight for p in parts]
        size = min(math.floor(len(p.dataset) / share) for p, share in zip(parts, shares, strict=True))
        size = min(size, max_rows) if max_rows else size
        rng = random.Random(seed)
        for part, share in zip(parts, shares, strict=True):
            keep = min(len(part.dataset), round(share * size))
            if keep < len(part.dataset):
                part.take(sorted(rng.sample(range(len(part.dataset)), keep)))
        return
    left = max_rows
    for part in parts:
        if left is not None and len(part.dataset) > left:
            part.take(list(range(left)))
        left = None if left is None else left - len(part.dataset)


def _checked(
    parts: list[LoadedSource],
    *,
    detected: Detected,
    style: str,
    cfg: DataConfig,
    rejects: Rejects | None,
    key: str,
    section: str,
) -> Dataset:
    """Check every row; raise, or write the invalid ones to `rejects` and drop them. Concatenate."""
    for part in parts:
        part.rows_read = len(part.dataset)
    invalid = [i for part in parts for i in find_invalid(part, detected, style=style)]
    if invalid and cfg.on_invalid == "error":
        raise invalid_rows_error(invalid, key=key, section=section)
    if invalid and rejects is None:
        raise invalid_rows_error(
            invalid,
            key=key,
            section=section,
            why=f"{section}.on_invalid is skip, but no rejects file was given to write them to (rlft bug: "
            "the stage must pass rejects_path)",
        )
    first = "; ".join(i.message(section=section) for i in invalid[:2])  # before the rows go
    if invalid:
        rejects.write(invalid)
        for part in parts:
            bad = {i.index for i in invalid if i.part is part}
            if bad:
                part.rows_rejected = len(bad)
                part.take([i for i in range(len(part.dataset)) if i not in bad])
    for part in parts:  # an optional column no kept row uses (all null) is dropped: trainers read it as set
        unused = [f for f in OPTIONAL_FIELDS.get(detected.format, ()) if f in part.dataset.column_names]
        unused = [f for f in unused if len(part.dataset) and not column_in_use(part.dataset, f)]
        if unused:
            part.dataset = part.dataset.remove_columns(unused)
    kept = [p.dataset for p in parts if len(p.dataset)]
    if not kept and not invalid:
        raise DataError(f"{key}: no rows to check (max_rows or the weights left none)")
    if not kept:
        rejects.keep()  # the message points to it
        raise DataError(
            f"{key}: no valid rows left: all {len(invalid)} were rejected (see {rejects.path}); the first: {first}"
        )
    return _concatenate(kept, key=key)


def _concatenate(datasets: list[Dataset], *, key: str) -> Dataset:
    """One dataset; a column missing from some sources is filled with nulls there."""
    if len(datasets) == 1:
        return datasets[0]
    from datasets import concatenate_datasets

    features = {}
    for ds in datasets:
        for name, feature in ds.features.items():
            features.setdefault(name, feature)
    aligned = []
    for ds in datasets:
        for name, feature in features.items():
            if name not in ds.column_names:
                ds = ds.add_column(name, [None] * len(ds), feature=feature)
        aligned.append(ds.select_columns(list(features)))
    try:
        return concatenate_datasets(aligned)
    except ValueError as e:
        differing = [
            f"{name}: {' vs '.join(sorted({str(ds.features[name]) for ds in aligned}))}"
            for name in features
            if len({str(ds.features[name]) for ds in aligned}) > 1
        ]
        raise DataError(
            f"{key}: the sources' columns have different types ({'; '.join(differing) or e}); "
            "make them agree, e.g. the same keys in every message"
        ) from e


def _decontaminate(
    train: Dataset,
    evaluation: Dataset,
    *,
    cfg: DataConfig,
    format: str,
    rejects: Rejects | None,
    section: str,
) -> tuple[Dataset, dict]:
    """Train without the rows whose prompt overlaps an eval prompt (see rlft.data.split), and the report.

    Decontamination is on by default, so a caller that gives no rejects file (a notebook, a test) gets
    the overlapping rows kept and a warning, rather than an error; a stage always gives one."""
    settings = cfg.decontaminate
    removal = find_contaminated(train, evaluation, format=format, exact=settings.exact, ngram=settings.ngram)
    report = dict(removal.details)
    if removal.reasons and rejects is None:
        warning = (
            f"{section}.decontaminate: {len(removal.reasons)} train rows overlap the eval set ({removal.details['exact']} "
            f"exact, {removal.details['ngram']} by {settings.ngram}-grams) and were kept: no rejects file was given to "
            "record their removal (pass rejects_path to load_stage_data)"
        )
        logger.warning(warning)
        return train, {**report, "removed": 0, "rows_after": len(train), "warning": warning}
    train = drop_rows(
        train,
        removal,
        step="decontaminate",
        rejects=rejects,
        key=f"{section}.train",
        config_key=f"{section}.decontaminate",
    )
    return train, {**report, "removed": len(removal.reasons), "rows_after": len(train)}


def _split_report(parts: list[LoadedSource]) -> dict | None:
    if not parts:
        return None
    sources = [
        {
            "key": p.key,
            "path": p.resolved.label,
            "type": p.resolved.kind,
            "files": [str(f) for f in p.resolved.files],
            "split": p.source.split,
            "subset": p.source.subset,
            "weight": p.source.weight,
            "columns": p.columns,
            "renamed": p.renamed,
            "rows_loaded": p.rows_loaded,
            "rows_read": p.rows_read,
            "rows_rejected": p.rows_rejected,
            "rows_kept": len(p.dataset),
        }
        for p in parts
    ]
    totals = {k: sum(s[k] for s in sources) for k in ("rows_loaded", "rows_read", "rows_rejected")}
    return {**totals, "sources": sources}
