"""Loading one data source into a memory-mapped `datasets.Dataset`, and citing its rows.

A source's `path` is, in order of precedence:
- a glob (`data/*.jsonl`): the matching files, sorted, all of one type;
- a folder: saved by `datasets.save_to_disk` (a Dataset or a DatasetDict), else the data files
  directly inside it;
- a file: `.jsonl`, `.json` (a list of objects, or JSON lines), `.csv`, `.parquet`;
- a hub dataset name (`org/name`), when no such local path exists.

Reading is row by row in effect: when the fast reader (`datasets`/pyarrow) fails on a JSON lines
or CSV file, the file is read again line by line (record by record for CSV), and each line it
cannot read (not valid JSON, not UTF-8, binary, over MAX_ROW_BYTES, a CSV record with the wrong
number of fields) becomes one *unreadable* row: an empty row whose reason is kept in
`LoadedSource.unreadable`, so the row checks reject it with its line and the rest of the file is
checked as usual. A file that is not UTF-8 text at all (UTF-16, binary) is one error up front.

Rows are cited as `row 17 of /abs/train.jsonl (line 18)`: the row within its file and, for
JSON lines and CSV, the line where it starts (blank lines and the CSV header counted). The
line table is built only when a row has to be cited, by one scan of the file.

`datasets` is imported inside functions: `import rlft.data` must stay light.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import difflib
import glob
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rlft.data.config import DataSource
from rlft.data.formats import CANONICAL_FIELDS, TEXT_FIELDS
from rlft.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_GLOB_CHARS = re.compile(r"[*?\[]")
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# pandas' default missing-value strings, applied to CSV columns that do not hold text: in a
# text column "None", "NA" or "null" is text, and an empty cell is an empty string.
_CSV_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN"]
_CSV_NA += ["<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
MAX_ROW_BYTES = 16 * 2**20  # one line (row) longer than this is rejected when a file is read line by line
SHOWN_TEXT = 200  # characters of an unreadable line kept in the rejects file
_BOMS = [  # longest first: the UTF-32 LE mark begins with the UTF-16 LE one
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
]


@dataclass(frozen=True)
class Location:
    """Where a row came from, for messages and the rejects file."""

    source: str  # file path, saved folder or hub dataset name
    row: int  # 1-based row within that file (or split)
    line: int | None = None  # 1-based line where the row starts (JSON lines, CSV)
    note: str = ""  # e.g. "split test"

    def __str__(self) -> str:
        extra = ([f"line {self.line}"] if self.line else []) + ([self.note] if self.note else [])
        return f"row {self.row} of {self.source}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class Resolved:
    """A source's path, resolved: what kind of thing it is and which files it names."""

    kind: str  # "json", "csv", "parquet" (files), "saved" (save_to_disk folder) or "hub"
    label: str  # the resolved path or glob, or the hub name
    files: list[Path] = field(default_factory=list)
    local: Path | None = None  # for a hub name: the local path that was looked for first


@dataclass
class LoadedSource:
    """One source, loaded, its columns renamed to canonical names, maybe cut to some of its rows."""

    key: str  # config key path, e.g. "data.train[1]"
    source: DataSource
    resolved: Resolved
    dataset: Dataset
    columns: list[str]  # the columns as loaded, before renaming
    renamed: dict[str, str]  # your column -> canonical name
    rows_loaded: int
    rows_read: int = 0  # rows kept by weights / max_rows, before checks
    rows_rejected: int = 0  # invalid rows written to the rejects file
    row_ids: list[int] | None = None  # dataset row -> loaded row, once cut (None: identity)
    # loaded row -> (why its line could not be read, its text): empty rows standing for such lines
    unreadable: dict[int, tuple[str, str]] = field(default_factory=dict)
    _lines: _LineTable | None = None

    def take(self, indices: list[int]) -> None:
        """Keep these rows (indices into the current dataset), remembering where they came from."""
        self.row_ids = [self.row_ids[i] for i in indices] if self.row_ids is not None else list(indices)
        self.dataset = self.dataset.select(indices)

    def locate(self, index: int) -> Location:
        """Where row `index` of the current dataset came from."""
        loaded = self.row_ids[index] if self.row_ids is not None else index
        if self._lines is None:
            self._lines = _LineTable.build(self.resolved, self.rows_loaded, split=self.source.split)
        return self._lines.locate(loaded)

    def unreadable_reason(self, index: int) -> tuple[str, str] | None:
        """(reason, text) when row `index` of the current dataset is a line that could not be read."""
        if not self.unreadable:
            return None
        return self.unreadable.get(self.row_ids[index] if self.row_ids is not None else index)

    def original_row(self, row: Mapping) -> dict:
        """A row with your column names back (for the rejects file)."""
        back = {canonical: column for column, canonical in self.renamed.items()}
        return {back.get(k, k): v for k, v in row.items()}


# --- resolving ------------------------------------------------------------------------------


def resolve_source(source: DataSource, *, key: str, base_dir: Path) -> Resolved:
    """What `source.path` names, relative to `base_dir`. Raises DataError when it names nothing."""
    if (
        source.path is None
    ):  # `from: STAGE`: the stage turns it into a path (rlft.data.config.with_stage_paths)
        raise DataError(
            f"{key}.from: '{source.from_}' is an earlier stage's output; only a pipeline resolves it"
        )
    raw = source.path
    path = Path(os.path.expanduser(raw))
    path = path if path.is_absolute() else base_dir / path
    if _GLOB_CHARS.search(raw):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{key}: the pattern {path} matches no files")
        return Resolved(_files_kind(files, key=key, label=str(path)), str(path), files)
    if path.is_dir():
        _check_readable(path, key=key)
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return Resolved("saved", str(path))
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in FILE_TYPES)
        if not files:
            raise DataError(
                f"{key}: the folder {path} was not saved by datasets.save_to_disk and holds no "
                f"{', '.join(FILE_TYPES)} files"
            )
        return Resolved(_files_kind(files, key=key, label=str(path)), str(path), files)
    if path.is_file():
        return Resolved(_files_kind([path], key=key, label=str(path)), str(path), [path])
    if _HUB_NAME.match(raw) and not raw.startswith(".") and Path(raw).suffix not in FILE_TYPES:
        return Resolved("hub", raw, local=path)
    raise DataError(
        f"{key}: {path} does not exist (relative paths start from {base_dir}, the config file's folder)"
    )


def check_text_files(resolved: Resolved, *, key: str) -> None:
    """A DataError when a JSON or CSV file is not UTF-8 text at all (UTF-16/32, binary): read from its
    first 4 KiB, so cheap enough for `rlft validate`. Bad lines in a text file are rows (see above)."""
    if resolved.kind not in ("json", "csv"):
        return
    for path in resolved.files:
        problem = _not_utf8_text(path)
        if problem:
            raise DataError(f"{key}: {path} {problem}")


def _check_readable(path: Path, *, key: str) -> None:
    """A DataError saying so when this process may not read `path` (a file, or list a folder)."""
    mode = os.R_OK | os.X_OK if path.is_dir() else os.R_OK
    if not os.access(path, mode):
        what = "folder" if path.is_dir() else "file"
        raise DataError(
            f"{key}: cannot read the {what} {path}: permission denied; make it readable "
            f"(e.g. chmod {'a+rx' if path.is_dir() else 'a+r'}) or run as a user who may read it"
        )


def _files_kind(files: list[Path], *, key: str, label: str) -> str:
    for p in files:
        _check_readable(p, key=key)
    kinds = {FILE_TYPES.get(p.suffix) for p in files}
    if None in kinds:
        odd = next(p for p in files if p.suffix not in FILE_TYPES)
        raise DataError(f"{key}: {odd} has an unsupported type {odd.suffix!r}; use {', '.join(FILE_TYPES)}")
    if len(kinds) > 1:
        raise DataError(
            f"{key}: {label} mixes file types ({', '.join(sorted(kinds))}); use one type per source"
        )
    return kinds.pop()


# --- loading --------------------------------------------------------------------------------


def load_source(
    source: DataSource, *, key: str, base_dir: Path, fields: Mapping[str, str], section: str
) -> LoadedSource:
    """Load one source (memory-mapped) and rename your columns to canonical names via `fields`."""
    resolved = resolve_source(source, key=key, base_dir=base_dir)
    if source.subset is not None and resolved.kind != "hub":
        raise DataError(f"{key}.subset: only hub datasets have subsets; {resolved.label} is local")
    if source.split != "train" and resolved.kind in FILE_TYPES.values():
        raise DataError(
            f"{key}.split: files have one split, 'train'; {source.split!r} applies to hub datasets and "
            "save_to_disk folders (give each split its own file)"
        )
    check_text_files(resolved, key=key)
    if resolved.kind == "csv":
        _check_csv_headers(resolved.files, fields, key=key, section=section)
    unreadable: dict[int, tuple[str, str]] = {}
    dataset = LOADERS[resolved.kind](resolved, source, key=key, fields=fields, unreadable=unreadable)
    if len(dataset) == 0:
        raise DataError(f"{key}: {resolved.label} has no rows")
    columns = list(dataset.column_names)
    renamed = _field_renames(columns, fields, key=key, label=resolved.label, section=section)
    if renamed:
        dataset = dataset.rename_columns(renamed)
    loaded = LoadedSource(key, source, resolved, dataset, columns, renamed, rows_loaded=len(dataset))
    loaded.unreadable = unreadable
    return loaded


def _field_renames(
    columns: list[str], fields: Mapping[str, str], *, key: str, label: str, section: str
) -> dict[str, str]:
    """{your column: canonical} for the mapped columns present. A mapping whose column is absent is
    an error unless the canonical column is already there (sources of one stage may differ)."""
    renames = {}
    for canonical, column in fields.items():
        if column == canonical:
            continue
        if column in columns:
            if canonical in columns:
                raise DataError(
                    f"{section}.fields.{canonical}: maps column {column!r} to {canonical!r}, but {label} "
                    f"({key}) already has a {canonical!r} column; rename or drop one of them"
                )
            renames[column] = canonical
        elif canonical not in columns:
            close = difflib.get_close_matches(column, columns, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DataError(
                f"{section}.fields.{canonical}: column {column!r} is not in {label} ({key}); "
                f"its columns are {', '.join(columns)}{hint}"
            )
    return renames


def _check_csv_headers(files: list[Path], fields: Mapping[str, str], *, key: str, section: str) -> None:
    """A CSV file's first line is its header. One that names no column rlft reads (canonical or
    mapped) is a missing header (the first line is data) or a wrong one: say both."""
    known = set(CANONICAL_FIELDS) | set(fields.values())
    for path in files:
        header = _csv_header(path)
        if not header or known.intersection(header):
            continue  # an empty file is reported by the loader
        line = ",".join(header)
        line = line if len(line) <= 80 else line[:77] + "..."
        raise DataError(
            f"{key}: {path} has no usable CSV header: its first line ({line!r}) is read as the header, but it "
            f"names none of the columns rlft reads ({', '.join(CANONICAL_FIELDS)}) and no column mapped in "
            f"{section}.fields. If that line is data, the header is missing: add a first line naming the "
            f"columns, e.g. 'prompt,completion'. If it is your header, map your columns with {section}.fields, "
            f"e.g. {section}.fields: {{prompt: {header[0]}}}"
        )


def _empty_file(files: list[Path], kind: str) -> str | None:
    """'<file> is empty (...)' for the first of these files that holds no rows, if any; read only
    after a loader failed, to explain the failure."""
    for path in files:
        try:
            if path.stat().st_size == 0:
                return f"{path} is empty (0 bytes)"
            if kind == "csv":
                with open(path, newline="", encoding="utf-8") as f:
                    records = [r for _, r in zip(range(2), (r for r in csv.reader(f) if r), strict=False)]
                if not records:
                    return f"{path} is empty (only blank lines)"
                if len(records) == 1:
                    return f"{path} has a header line ({','.join(records[0])}) but no rows"
                continue
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
            if not text.strip():
                return f"{path} is empty (only blank lines)"
            if text.lstrip().startswith("[") and json.loads(text) == []:
                return f"{path} is empty (an empty JSON list)"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error):
            continue
    return None


def _load_json(
    resolved: Resolved, source: DataSource, *, key: str, fields: Mapping[str, str], unreadable: dict
) -> Dataset:
    from datasets import load_dataset

    files = [str(p) for p in resolved.files]

    def load(copies: list[Path]) -> Dataset:
        kept = load_dataset(
            "json", data_files=[str(c) for c in copies], split="train", parse_agent_traces=False
        )
        return _exact_mixed_columns(kept, copies)

    if not all(_is_utf8(p) for p in resolved.files):  # pyarrow would read bad bytes as U+FFFD, silently
        return _by_line(resolved, key=key, unreadable=unreadable, reader=_json_lines, load=load, error=None)
    try:
        # parse_agent_traces=False: datasets 5 otherwise rewrites files that look like agent logs.
        with _quiet_loader():  # a failure is explained below, row by row
            dataset = load_dataset("json", data_files=files, split="train", parse_agent_traces=False)
    except Exception as e:  # datasets wraps pyarrow/JSON errors in several types
        empty = _empty_file(resolved.files, "json")
        if empty:
            raise DataError(f"{key}: {empty}; a data file needs at least one row") from e
        if any(_is_json_array(p) for p in resolved.files):  # one document: no rows to tell apart
            raise DataError(
                f"{key}: could not read {_bad_json_location(resolved.files) or resolved.label}: {_cause(e)}"
            ) from e
        return _by_line(resolved, key=key, unreadable=unreadable, reader=_json_lines, load=load, error=e)
    return _exact_mixed_columns(dataset, resolved.files)


@contextlib.contextmanager
def _quiet_loader() -> Iterator[None]:
    """No ERROR log from `datasets`' JSON/CSV builders while the fast reader tries a file."""
    builders = logging.getLogger("datasets.packaged_modules")
    level = builders.level
    builders.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        builders.setLevel(level)


def _by_line(
    resolved: Resolved, *, key: str, unreadable: dict, reader, load, error: Exception | None
) -> Dataset:
    """The slow path, when the fast reader failed or would misread: `reader(path)` yields (row,
    reason, text, line) per line (per CSV record); the rows it could read are loaded again, by `load(copies)`, from a
    temporary copy, each unreadable line standing as an empty row noted in `unreadable`. When
    every line reads, the failure was not a line's: it is reported as it was."""
    import tempfile

    suffix = ".csv" if resolved.kind == "csv" else ".jsonl"
    with tempfile.TemporaryDirectory(prefix="rlft-rows-") as tmp:
        copies, index, lines = [], 0, {}
        for n, path in enumerate(resolved.files):
            copy = Path(tmp) / f"{n}{suffix}"
            with open(copy, "w", encoding="utf-8", newline="") as out:
                header = None
                for row, reason, text, line in reader(path):
                    if resolved.kind == "csv":
                        if header is None:
                            header = row
                            csv.writer(out).writerow(header)
                            continue
                        csv.writer(out).writerow(row if reason is None else [""] * len(header))
                    else:
                        out.write((json.dumps(row) if reason is None else "{}") + "\n")
                    if reason is not None:
                        unreadable[index] = (reason, text)
                        lines.setdefault(n, line)
                    index += 1
            copies.append(copy)
        if not unreadable and error is not None:
            raise DataError(f"{key}: could not read {resolved.label}: {_cause(error)}") from error
        if len(unreadable) == index:
            n = min(lines)
            raise DataError(
                f"{key}: none of the {index} rows of {resolved.label} could be read; the first, "
                f"{resolved.files[n]} line {lines[n]}: {unreadable[min(unreadable)][0]}"
            ) from error
        try:
            return load(copies)
        except Exception as e:  # what datasets cannot read even line by line: say so, no traceback
            raise DataError(f"{key}: could not read {resolved.label}: {_cause(e)}") from e


def _line_problem(raw: bytes) -> tuple[str | None, str]:
    """(why this line is unreadable or None, its text)."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    shown = text if len(text) <= SHOWN_TEXT else text[:SHOWN_TEXT] + "..."
    if len(raw) > MAX_ROW_BYTES:
        return f"the line is {len(raw):,} bytes, over the limit of {MAX_ROW_BYTES:,} bytes for one row", shown
    if b"\0" in raw:
        return "holds binary data (NUL bytes), not text", shown
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return (
            f"is not UTF-8 text (byte {raw[e.start : e.start + 1]!r} at column {e.start + 1}); save the file as UTF-8",
            shown,
        )
    return None, shown


def _json_lines(path: Path):
    """(row, reason, text, line number) for each non-blank line of a JSON lines file."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            reason, text = _line_problem(raw)
            if reason is None:
                try:
                    row = json.loads(raw.rstrip(), parse_constant=_no_constant)
                except json.JSONDecodeError as e:
                    reason = f"not valid JSON: {e.msg} (column {e.colno}); fix the line or remove it"
                except ValueError as e:
                    reason = f"not valid JSON: {e}; fix the line or remove it"
                else:
                    if not isinstance(row, dict):
                        reason = f'is not a JSON object ({{"field": value, ...}}), it is {_json_kind(row)}'
                    else:
                        yield row, None, text, number
                        continue
            yield None, reason, text, number


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number (write null, or a number)")


def _json_kind(value: object) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _exact_mixed_columns(dataset: Dataset, files: Sequence[Path]) -> Dataset:
    """Columns of mixed types with their values as written.

    datasets 5.2 stores a column whose rows hold different types (a string here, a number there)
    as a `Json` feature, but keeps a string's text unquoted, so a string that spells JSON ("4",
    "true") comes back as the value it spells (4, True): a valid row would be reported invalid.
    Such columns are read again from the files with Python's json and stored quoted.
    """
    from datasets import Json

    mixed = [name for name, feature in dataset.features.items() if isinstance(feature, Json)]
    if not mixed:
        return dataset
    rows: list[dict] = []
    for path in files:
        text = Path(path).read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows += json.loads(text)
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    if len(rows) != len(dataset):  # not a layout read here (e.g. one object per file): leave it
        return dataset
    order = list(dataset.column_names)
    for name in mixed:
        values = [json.dumps(row.get(name) if isinstance(row, dict) else None) for row in rows]
        dataset = dataset.remove_columns(name).add_column(name, values, feature=Json())
    return dataset.select_columns(order)


def _load_csv(
    resolved: Resolved, source: DataSource, *, key: str, fields: Mapping[str, str], unreadable: dict
) -> Dataset:
    from datasets import load_dataset

    # Text columns are read as strings, as written: "42" stays "42" and "None" stays "None".
    text_columns = set(TEXT_FIELDS) | {fields[f] for f in TEXT_FIELDS if f in fields}
    header: list[str] = []
    for path in resolved.files:
        header += [c for c in _csv_header(path) if c not in header]
    text = [c for c in header if c in text_columns]

    def load(files: Sequence[Path]) -> Dataset:
        return load_dataset(
            "csv",
            data_files=[str(p) for p in files],
            split="train",
            converters=dict.fromkeys(text, str),
            keep_default_na=False,
            na_values={c: _CSV_NA for c in header if c not in text_columns},
        )

    # pandas reads a record with an extra field as an index column and a short one as nulls, silently:
    # every record is checked first (one pass of Python's csv module), and bad ones make it row by row.
    if not all(_is_utf8(p) and _csv_fields_agree(p) for p in resolved.files):
        return _by_line(resolved, key=key, unreadable=unreadable, reader=_csv_records, load=load, error=None)
    try:
        with _quiet_loader():
            return load(resolved.files)
    except Exception as e:
        empty = _empty_file(resolved.files, "csv")
        if empty:
            raise DataError(f"{key}: {empty}; a data file needs at least one row") from e
        return _by_line(resolved, key=key, unreadable=unreadable, reader=_csv_records, load=load, error=e)


def _csv_records(path: Path):
    """(record, reason, text, line) for the header and each non-blank record of a CSV file; a record is
    unreadable when it is not UTF-8 text, holds NUL bytes, is too long, or has another number of
    fields than the header."""
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = None
        while True:
            line = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield [], f"is not a CSV record: {e}", "", line
                continue
            if not record:
                continue
            raw = ",".join(record).encode("utf-8", errors="surrogateescape")
            reason, text = _line_problem(raw)
            if header is None:
                header = record
                yield record, None, text, line
                continue
            if reason is None and len(record) != len(header):
                reason = (
                    f"has {len(record)} fields, the header has {len(header)} ({', '.join(header)}); "
                    "quote a field that holds a comma"
                )
            yield record, reason, text, line


def _load_parquet(
    resolved: Resolved, source: DataSource, *, key: str, fields: Mapping[str, str], unreadable: dict
) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset("parquet", data_files=[str(p) for p in resolved.files], split="train")
    except Exception as e:
        raise DataError(f"{key}: could not read {resolved.label}: {_cause(e)}") from e


def _load_saved(
    resolved: Resolved, source: DataSource, *, key: str, fields: Mapping[str, str], unreadable: dict
) -> Dataset:
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(resolved.label, keep_in_memory=False)
    except Exception as e:
        raise DataError(f"{key}: could not load the saved dataset {resolved.label}: {_cause(e)}") from e
    if isinstance(loaded, DatasetDict):
        if source.split not in loaded:
            raise DataError(
                f"{key}.split: {resolved.label} has no split {source.split!r}; it has {', '.join(loaded)}"
            )
        return loaded[source.split]
    if source.split != "train":
        raise DataError(
            f"{key}.split: {resolved.label} is a single saved Dataset without splits; remove split"
        )
    return loaded


def _load_hub(
    resolved: Resolved, source: DataSource, *, key: str, fields: Mapping[str, str], unreadable: dict
) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(resolved.label, source.subset, split=source.split)
    except Exception as e:
        raise DataError(
            f"{key}: {resolved.local} does not exist, and loading {source.path!r} as a hub dataset failed: "
            f"{_cause(e)}"
        ) from e


LOADERS = {
    "json": _load_json,
    "csv": _load_csv,
    "parquet": _load_parquet,
    "saved": _load_saved,
    "hub": _load_hub,
}


def _cause(error: BaseException) -> str:
    """The innermost message of a chained exception (datasets wraps the useful one)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}"


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        try:
            for record in csv.reader(f):
                if record:
                    return record
        except csv.Error:
            pass
    return []


def _is_utf8(path: Path) -> bool:
    """True when the whole file decodes as UTF-8 and holds no NUL byte (read in 1 MiB blocks, at C speed)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while block := f.read(2**20):
                if b"\0" in block:
                    return False
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _csv_fields_agree(path: Path) -> bool:
    """True when every record of a (UTF-8) CSV file has as many fields as its header: pyarrow's
    streaming reader counts them (C++, one column kept); Python's csv module only finds the lines."""
    import pyarrow.csv as pc

    header = _csv_header(path)
    if not header:
        return True
    wrong = []

    def note(row) -> str:
        wrong.append(row)
        return "skip"

    try:
        reader = pc.open_csv(
            path,
            parse_options=pc.ParseOptions(invalid_row_handler=note, newlines_in_values=True),
            convert_options=pc.ConvertOptions(
                include_columns=[header[0]], column_types={header[0]: "string"}
            ),
        )
        for _ in reader:
            if wrong:
                return False
    except Exception:  # noqa: BLE001 - anything pyarrow cannot read: the row-by-row reader says what
        return False
    return not wrong


def _not_utf8_text(path: Path) -> str | None:
    """What the file is when its start shows it is not UTF-8 text (UTF-16/32, binary), else None."""
    with open(path, "rb") as f:
        head = f.read(4096)
    encoding = next((name for bom, name in _BOMS if head.startswith(bom)), None)
    if encoding is None:
        if head[1::2].count(0) > len(head) // 4 or head[0::2].count(0) > len(head) // 4:
            encoding = "UTF-16"  # ASCII text in UTF-16 without a byte-order mark: every other byte is 0
    if encoding:
        return (
            f"is {encoding} text; rlft reads UTF-8: convert it, e.g. "
            f"iconv -f {encoding} -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}"
        )
    control = sum(head.count(bytes([c])) for c in (*range(9), *range(14, 27), *range(28, 32)))
    if b"\0" in head and control > len(head) // 20:  # a stray NUL in a line is that row's problem
        return "holds binary data, not text: is it the file you meant?"
    return None


def _bad_json_location(files: list[Path]) -> str | None:
    """'<file> line N' for the first line of these files that is not valid JSON, if any."""
    for path in files:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            if _is_json_array(path):
                try:
                    json.load(f)
                except json.JSONDecodeError as e:
                    return f"{path} line {e.lineno}"
                continue
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        json.loads(line)
                    except json.JSONDecodeError:
                        return f"{path} line {number}"
    return None


def _is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


# --- citing rows ----------------------------------------------------------------------------


@dataclass
class _LineTable:
    """Maps a loaded row index to (file, row in file, line), built by one scan of the files."""

    resolved: Resolved
    starts: list[int]  # first loaded row of each file
    lines: list[list[int] | None]  # per file, the start line of each row (None: rows have no lines)
    note: str = ""

    @classmethod
    def build(cls, resolved: Resolved, rows: int, *, split: str) -> _LineTable:
        if resolved.kind in ("saved", "hub"):
            return cls(resolved, [0], [None], note=f"split {split}")
        starts, lines, total = [], [], 0
        for path in resolved.files:
            file_lines, count = _row_lines(path, resolved.kind)
            starts.append(total)
            lines.append(file_lines)
            total += count
        if total != rows:  # the scan disagrees with the loader: cite rows of the whole source
            return cls(Resolved(resolved.kind, resolved.label), [0], [None])
        return cls(resolved, starts, lines)

    def locate(self, index: int) -> Location:
        if not self.resolved.files:
            return Location(self.resolved.label, index + 1, note=self.note)
        f = bisect.bisect_right(self.starts, index) - 1
        row = index - self.starts[f]
        lines = self.lines[f]
        return Location(str(self.resolved.files[f]), row + 1, lines[row] if lines else None, self.note)


def _row_lines(path: Path, kind: str) -> tuple[list[int] | None, int]:
    """(start line of each row or None, number of rows) of one data file."""
    if kind == "parquet":
        import pyarrow.parquet as pq

        return None, pq.ParquetFile(path).metadata.num_rows
    if kind == "csv":
        lines, header_seen = [], False
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            while True:
                start = reader.line_num + 1
                try:
                    record = next(reader)
                except StopIteration:
                    break
                except csv.Error:
                    record = ["?"]  # unreadable: still a row (rlft.data.sources._csv_records)
                if not record:  # blank line: skipped by the loader
                    continue
                if header_seen:
                    lines.append(start)
                header_seen = True
        return lines, len(lines)
    if _is_json_array(path):
        with open(path, encoding="utf-8-sig") as f:
            return None, len(json.load(f))
    with open(path, "rb") as f:
        lines = [number for number, line in enumerate(f, 1) if line.strip()]
    return lines, len(lines)
