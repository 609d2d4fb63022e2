"""Running the row checks of `rlft.data.formats` over loaded sources; the rejects file.

Invalid rows either stop the run (`on_invalid: error`, the message cites up to MAX_SHOWN rows
and gives the total) or are dropped and written, one JSON object a line, to the stage's
rejects file (`on_invalid: skip`): never dropped silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rlft.data.formats import OPTIONAL_FIELDS, Detected, check_row
from rlft.data.sources import LoadedSource
from rlft.errors import DataError

MAX_SHOWN = 5  # invalid rows cited in one error message
BATCH_ROWS = 1000  # rows read from Arrow at a time while checking


@dataclass(frozen=True)
class Invalid:
    """One invalid row of a loaded source."""

    part: LoadedSource
    index: int  # row of part.dataset
    field: str  # canonical field; "" for a line that could not be read (the reason says why)
    reason: str

    def message(self, *, section: str) -> str:
        """`data.train: row 17 of /abs/prefs.jsonl (line 17): field 'completion' is empty`, or for a
        line that could not be read, `...(line 4): not valid JSON: ...`."""
        where = f"{self.part.key}: {self.part.locate(self.index)}"
        if not self.field:
            return f"{where}: {self.reason}"
        return f"{where}: field {self.field_label(section=section)} {self.reason}"

    def column(self) -> str:
        """Your name for the field (the column that data.fields renamed to it, if any)."""
        return next((c for c, canonical in self.part.renamed.items() if canonical == self.field), self.field)

    def field_label(self, *, section: str) -> str:
        """'completion', or 'answer' (data.fields.completion) when your column was renamed."""
        column = self.column()
        return repr(column) if column == self.field else f"{column!r} ({section}.fields.{self.field})"


def find_invalid(part: LoadedSource, detected: Detected, *, style: str) -> list[Invalid]:
    """Every invalid row of `part`, in order. Reads only the format's columns (and its optional
    ones, e.g. a preference margin, when present), in Arrow batches."""
    optional = [f for f in OPTIONAL_FIELDS.get(detected.format, ()) if f in part.dataset.column_names]
    # An optional column no row gives a number (e.g. one row's "margin": "high", the others none) is
    # not in use: its nulls are fine, and only the rows whose value breaks its type are invalid.
    unused = {f for f in optional if not column_in_use(part.dataset, f)}
    columns = [*detected.fields, *optional]
    dataset = part.dataset.select_columns(columns)
    invalid, start = [], 0
    for batch in dataset.iter(batch_size=BATCH_ROWS):
        n = len(batch[detected.fields[0]])
        for j in range(n):
            unreadable = part.unreadable_reason(start + j)
            if unreadable:
                invalid.append(Invalid(part, start + j, "", unreadable[0]))
                continue
            row = {f: batch[f][j] for f in columns if not (f in unused and batch[f][j] is None)}
            problem = check_row(row, detected, style=style)
            if problem:
                invalid.append(Invalid(part, start + j, *problem))
        start += n
    return invalid


def column_in_use(dataset, name: str) -> bool:
    """True when some row of an optional numeric column (margin) holds a number."""
    return any(
        isinstance(v, int | float) and not isinstance(v, bool)
        for batch in dataset.select_columns([name]).iter(batch_size=BATCH_ROWS)
        for v in batch[name]
    )


def invalid_rows_error(invalid: list[Invalid], *, key: str, section: str, why: str = "") -> DataError:
    """One DataError citing the first MAX_SHOWN invalid rows and the total."""
    shown = [i.message(section=section) for i in invalid[:MAX_SHOWN]]
    count = f"{len(invalid)} invalid row{'s' if len(invalid) != 1 else ''} in {key}"
    if len(invalid) > MAX_SHOWN:
        count += f", the first {MAX_SHOWN} shown"
    advice = why or (
        f"fix the data, or set {section}.on_invalid: skip to leave invalid rows out (they are written to the "
        "rejects file)"
    )
    return DataError("\n".join([*shown, f"({count}; {advice})"]))


class Rejects:
    """The rejects file, one JSON object per dropped row; use as a context manager. The file is
    replaced atomically on success (several processes loading the same data never interleave
    lines) and left untouched on error."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def __enter__(self) -> Rejects:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if self._file.closed:  # kept already
            return
        self._file.close()
        if error_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)

    def keep(self) -> None:
        """Close and keep the file now, before raising an error whose message points to it."""
        self._file.close()
        os.replace(self._tmp, self.path)

    def write_record(self, record: dict) -> None:
        """Write one record as it is; curation and decontamination write {"step", "reason", "data", ...}."""
        self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.count += 1

    def write(self, invalid: list[Invalid]) -> None:
        """Write these rows (with your column names) and why each was rejected."""
        by_part: dict[int, list[Invalid]] = {}
        for item in invalid:
            by_part.setdefault(id(item.part), []).append(item)
        for items in by_part.values():
            part = items[0].part
            rows = part.dataset.select([i.index for i in items])
            for item, row in zip(items, rows, strict=True):
                where = part.locate(item.index)
                unreadable = part.unreadable_reason(item.index)
                record = {
                    "source": where.source,
                    "row": where.row,
                    "line": where.line,
                    "key": part.key,
                    "field": item.column() if item.field else None,
                    "reason": item.reason,
                    "data": unreadable[1] if unreadable else part.original_row(row),
                }
                self._file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                self.count += 1
