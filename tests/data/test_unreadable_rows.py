"""Row-level reading (issue 17): a line the reader cannot parse is one rejected row with its line and
reason, and the rest of the file is checked as usual; mixed types in an extra column are reported
against the rows that break it; the rejects file exists whenever a message points to it."""

from __future__ import annotations

import json

import pytest

from rlft.cli import main
from rlft.data import sources
from rlft.data.config import DataConfig
from rlft.data.stage import load_stage_data
from rlft.errors import DataError


def rejects(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def inspect(tmp_path, name: str, text: str | bytes, capsys) -> tuple[int, str, list[dict]]:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["data", "inspect", str(path), "--format", "preference", "--out", str(tmp_path / "rep")])
    out = capsys.readouterr()
    written = tmp_path / "rep" / "rejects.jsonl"
    return code, out.out + out.err, rejects(written) if written.is_file() else []


CUT_OFF = (
    '{"prompt": "a1", "chosen": "b1", "rejected": "c1"}\n'
    '{"prompt": "a2", "chosen": "", "rejected": "c2"}\n'
    '{"prompt": "a3", "chosen": "b3"}\n'
    '{"prompt": "a4", "chosen": "b4", "rejected": \n'
    '{"prompt": "a5", "chosen": "b5", "rejected": "c5"}\n'
)


def test_a_cut_off_line_is_one_rejected_row_and_the_rest_is_checked(tmp_path, capsys):
    code, out, rows = inspect(tmp_path, "p.jsonl", CUT_OFF, capsys)
    assert code == 0
    assert [(r["line"], r["field"], r["reason"]) for r in rows] == [
        (2, "chosen", "is empty"),
        (3, "rejected", "is missing or null"),
        (4, None, "not valid JSON: Expecting value (column 45); fix the line or remove it"),
    ]
    assert rows[2]["data"] == '{"prompt": "a4", "chosen": "b4", "rejected": '
    assert "3 of 5 read" in out


def test_a_cut_off_line_stops_the_run_with_every_bad_row_named(tmp_path):
    (tmp_path / "p.jsonl").write_text(CUT_OFF)
    with pytest.raises(DataError) as e:
        load_stage_data(DataConfig(train="p.jsonl"), formats=("preference",), base_dir=tmp_path)
    lines = str(e.value).splitlines()
    assert [line.split(f"{tmp_path}/p.jsonl ")[1] for line in lines[:3]] == [
        "(line 2): field 'chosen' is empty",
        "(line 3): field 'rejected' is missing or null",
        "(line 4): not valid JSON: Expecting value (column 45); fix the line or remove it",
    ]
    assert lines[3].startswith("(3 invalid rows in data.train;")


MARGIN = (
    '{"prompt": "a1", "chosen": "b1", "rejected": "c1"}\n'
    '{"prompt": "a2", "chosen": "", "rejected": "c2"}\n'
    '{"prompt": "a3", "chosen": "b3", "rejected": null}\n'
    '{"prompt": "a4", "chosen": "b4", "rejected": "c4", "margin": "high"}\n'
    '{"prompt": "", "chosen": "b5", "rejected": "c5"}\n'
)


def test_one_bad_value_in_an_extra_column_rejects_only_its_row(tmp_path, capsys):
    code, out, rows = inspect(tmp_path, "p.jsonl", MARGIN, capsys)
    assert code == 0
    assert [(r["line"], r["field"], r["reason"]) for r in rows] == [
        (2, "chosen", "is empty"),
        (3, "rejected", "is missing or null"),
        (4, "margin", "must be a number, got the text 'high'"),
        (5, "prompt", "is empty"),
    ]
    data = load_stage_data(
        DataConfig(train="p.jsonl", on_invalid="skip"),
        formats=("preference",),
        base_dir=tmp_path,
        rejects_path=tmp_path / "r.jsonl",
    )
    assert data.train.column_names == ["prompt", "chosen", "rejected"]  # the margin no row uses is dropped
    assert data.train["prompt"] == ["a1"]


def test_a_margin_in_use_still_needs_every_row(tmp_path, capsys):
    text = '{"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1.5}\n{"prompt": "d", "chosen": "e", "rejected": "f"}\n'
    code, _, rows = inspect(tmp_path, "p.jsonl", text, capsys)
    assert code == 0
    assert [(r["line"], r["field"]) for r in rows] == [(2, "margin")]
    assert rows[0]["reason"].startswith("is missing or null; give every row a margin")


def test_the_rejects_file_exists_when_every_row_is_rejected(tmp_path, capsys):
    code, out, rows = inspect(tmp_path, "p.jsonl", MARGIN.splitlines(keepends=True)[1] * 2, capsys)
    assert code == 2
    assert f"no valid rows left: all 2 were rejected (see {tmp_path}/rep/rejects.jsonl)" in out
    assert len(rows) == 2


def test_csv_records_with_the_wrong_number_of_fields(tmp_path, capsys):
    text = 'prompt,chosen,rejected\na,b,c\nd,e,f,g\nh,i\n"j,k",l,m\n'
    code, _, rows = inspect(tmp_path, "p.csv", text, capsys)
    assert code == 0
    assert [(r["line"], r["reason"]) for r in rows] == [
        (3, "has 4 fields, the header has 3 (prompt, chosen, rejected); quote a field that holds a comma"),
        (4, "has 2 fields, the header has 3 (prompt, chosen, rejected); quote a field that holds a comma"),
    ]
    data = load_stage_data(
        DataConfig(train="p.csv", on_invalid="skip"),
        formats=("preference",),
        base_dir=tmp_path,
        rejects_path=tmp_path / "r.jsonl",
    )
    assert data.train["prompt"] == ["a", "j,k"]


def test_bad_bytes_and_long_lines_are_rows(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sources, "MAX_ROW_BYTES", 100)
    good = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
    long = b'{"prompt": "' + b"x" * 100 + b'", "chosen": "b", "rejected": "c"}\n'
    text = (
        good
        + b'{"prompt": "\xff", "chosen": "b", "rejected": "c"}\n'
        + b'{"prompt": "a\x00"}\n'
        + long
        + good
    )
    code, _, rows = inspect(tmp_path, "p.jsonl", text, capsys)
    assert code == 0
    assert [(r["line"], r["reason"]) for r in rows] == [
        (2, "is not UTF-8 text (byte b'\\xff' at column 13); save the file as UTF-8"),
        (3, "holds binary data (NUL bytes), not text"),
        (4, "the line is 147 bytes, over the limit of 100 bytes for one row"),
    ]
