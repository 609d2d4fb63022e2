"""Every kind of bad input gives one precise message: the key, the file, the 1-based row (and line,
for JSON lines and CSV), the field and what is wrong. With `on_invalid: skip`, exactly the invalid
rows go to the rejects file.

| bad input                          | message (abridged)                                               |
|------------------------------------|------------------------------------------------------------------|
| missing field                      | row 2 of f.jsonl (line 2): field 'completion' is missing or null |
| empty string                       | ... field 'completion' is empty                                  |
| wrong type                         | ... field 'completion' must be a string, got a number            |
| unknown role                       | ... field 'prompt' message 1 has role 'bot'; expected one of ... |
| chosen == rejected                 | ... field 'rejected' is the same as 'chosen' (after stripping ...|
| non-numeric margin                 | ... field 'margin' must be a number, got the text 'high'         |
| label not a boolean                | ... field 'label' must be true or false, got a number            |
| malformed JSON line                | could not read f.jsonl line 3: ...                               |
| empty file                         | f.jsonl is empty (0 bytes); a data file needs at least one row   |
| unknown format                     | f.jsonl has columns question, response, which make none of ...   |
| CSV without a header               | f.csv has no usable CSV header: ... the header is missing ...    |
| mixed formats across sources       | data.train[1]: b.jsonl is standard language_modeling (text), ... |
| unreadable file                    | cannot read the file f.jsonl: permission denied                  |
| folder that is not a dataset       | the folder d was not saved by datasets.save_to_disk and holds ...|
| implicit prompt in plain text      | 'chosen' and 'rejected' are plain text and there is no 'prompt' ...|
"""

import json
import os

import pytest

from rlft.data import DataConfig, load_stage_data
from rlft.errors import DataError

SFT = ("language_modeling", "prompt_completion")
PREFERENCE = ("preference", "implicit_preference")


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


def msg(role, content):
    return {"role": role, "content": content}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(tmp_path, train, *, formats=SFT, rejects_path=None, **cfg):
    return load_stage_data(
        DataConfig(train=train, **cfg), formats=formats, base_dir=tmp_path, rejects_path=rejects_path
    )


def first_line(tmp_path, train, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load(tmp_path, train, **kwargs)
    return str(error.value).splitlines()[0]


def message(tmp_path, train, **kwargs) -> str:
    with pytest.raises(DataError) as error:
        load(tmp_path, train, **kwargs)
    return str(error.value)


# --- row errors: file, row, line, field, reason --------------------------------------------------

GOOD_PC = {"prompt": "2+2=", "completion": "four"}
GOOD_PREF = {"prompt": "2+2=", "chosen": "four", "rejected": "five"}


@pytest.mark.parametrize(
    ("bad", "formats", "expected"),
    [
        ({"prompt": "q"}, SFT, "field 'completion' is missing or null"),
        ({"prompt": "q", "completion": "  "}, SFT, "field 'completion' is empty"),
        ({"prompt": "q", "completion": 4}, SFT, "field 'completion' must be a string, got a number"),
        (
            {"prompt": "q", "chosen": " same ", "rejected": "same"},
            PREFERENCE,
            "field 'rejected' is the same as 'chosen' (after stripping whitespace); a preference pair needs "
            "two different answers",
        ),
        (
            {**GOOD_PREF, "margin": "high"},
            PREFERENCE,
            "field 'margin' must be a number, got the text 'high'",
        ),
        ({**GOOD_PREF, "margin": True}, PREFERENCE, "field 'margin' must be a number, got a boolean"),
        (
            {**GOOD_PREF, "margin": None},
            PREFERENCE,
            "field 'margin' is missing or null; give every row a margin, or drop the margin column",
        ),
        (
            {"prompt": "q", "completion": "a", "label": 1},
            ("unpaired_preference",),
            "field 'label' must be true or false, got a number",
        ),
    ],
)
def test_standard_row_errors(tmp_path, bad, formats, expected):
    good = {**GOOD_PREF, "margin": 1.5} if "margin" in bad else GOOD_PREF if "chosen" in bad else GOOD_PC
    if "label" in bad:
        good = {"prompt": "q", "completion": "a", "label": True}
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad])
    assert (
        first_line(tmp_path, "d.jsonl", formats=formats)
        == f"data.train: row 2 of {path} (line 2): {expected}"
    )


def test_unknown_role_and_same_conversational_answers(tmp_path):
    rows = [
        {
            "prompt": [msg("user", "hi")],
            "chosen": [msg("assistant", "A")],
            "rejected": [msg("assistant", "b")],
        },
        {
            "prompt": [msg("bot", "hi")],
            "chosen": [msg("assistant", "A")],
            "rejected": [msg("assistant", "b")],
        },
        {
            "prompt": [msg("user", "hi")],
            "chosen": [msg("assistant", "A ")],
            "rejected": [msg("assistant", "A")],
        },
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    lines = message(tmp_path, "c.jsonl", formats=PREFERENCE).splitlines()
    assert lines[0] == (
        f"data.train: row 2 of {path} (line 2): field 'prompt' message 1 has role 'bot'; "
        "expected one of system, user, assistant, tool"
    )
    assert lines[1].startswith(
        f"data.train: row 3 of {path} (line 3): field 'rejected' is the same as 'chosen'"
    )
    assert lines[2] == (
        "(2 invalid rows in data.train; fix the data, or set data.on_invalid: skip to leave invalid rows out "
        "(they are written to the rejects file))"
    )


def test_csv_row_error_cites_line_and_mapped_column(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text('question,chosen,rejected\n"two\nlines",a,b\nq,same,same\n')
    line = first_line(tmp_path, "prefs.csv", formats=PREFERENCE, fields={"prompt": "question"})
    assert line.startswith(f"data.train: row 2 of {path} (line 4): field 'rejected' is the same as 'chosen'")


# --- file-level errors ----------------------------------------------------------------------------


def test_malformed_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b",}\n')
    line = first_line(tmp_path, "bad.jsonl")
    assert line.startswith(f"data.train: row 2 of {path} (line 3): not valid JSON: ")


@pytest.mark.parametrize(
    ("name", "text", "what"),
    [
        ("e.jsonl", "", "is empty (0 bytes)"),
        ("e.jsonl", "\n  \n", "is empty (only blank lines)"),
        ("e.json", "[]", "is empty (an empty JSON list)"),
        ("e.csv", "", "is empty (0 bytes)"),
        ("e.csv", "prompt,completion\n", "has a header line (prompt,completion) but no rows"),
    ],
)
def test_empty_file(tmp_path, name, text, what):
    (tmp_path / name).write_text(text)
    assert (
        message(tmp_path, name) == f"data.train: {tmp_path / name} {what}; a data file needs at least one row"
    )


def test_unknown_format_lists_columns_and_formats(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "response": "r"}])
    text = message(tmp_path, "qa.jsonl", formats=PREFERENCE)
    assert text.startswith(
        f"data.train: {path} has columns question, response, which make none of the formats"
    )
    assert "preference: prompt, chosen, rejected" in text
    assert "implicit_preference: chosen, rejected (no prompt column; conversational" in text


def test_csv_without_header_says_the_header_is_missing(tmp_path):
    path = tmp_path / "nohead.csv"
    path.write_text("What is 2+2?,4\nWhat is 3+3?,6\n")
    text = message(tmp_path, "nohead.csv")
    assert text.startswith(
        f"data.train: {path} has no usable CSV header: its first line ('What is 2+2?,4') is read as the header"
    )
    assert "If that line is data, the header is missing: add a first line naming the columns" in text
    assert "map your columns with data.fields" in text


def test_csv_with_mapped_header_is_not_a_missing_header(tmp_path):
    (tmp_path / "qa.csv").write_text("question,answer\nq,a\n")
    data = load(tmp_path, "qa.csv", fields={"prompt": "question", "completion": "answer"})
    assert data.train["prompt"] == ["q"]


def test_mixed_formats_across_sources(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [GOOD_PC])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "hello"}])
    assert first_line(tmp_path, ["a.jsonl", "b.jsonl"]) == (
        f"data.train[1]: {b} is standard language_modeling (text), but data.train[0] ({a}) is standard "
        "prompt_completion (prompt, completion); all sources of a stage must share one format and style"
    )


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "secret.jsonl", [GOOD_PC])
    if os.geteuid() == 0:  # root reads anything: pretend the permission is missing
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda p, mode: False if str(p) == str(path) else real_access(p, mode)
        )
    else:
        path.chmod(0)
    try:
        assert message(tmp_path, "secret.jsonl") == (
            f"data.train: cannot read the file {path}: permission denied; make it readable (e.g. chmod a+r) "
            "or run as a user who may read it"
        )
    finally:
        path.chmod(0o644)


def test_folder_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    assert message(tmp_path, "notes") == (
        f"data.train: the folder {tmp_path / 'notes'} was not saved by datasets.save_to_disk and holds no "
        ".jsonl, .json, .csv, .parquet files"
    )


def test_implicit_prompt_in_plain_text_is_refused(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"chosen": "The sky is blue.", "rejected": "The sky is green."}]
    )
    text = message(tmp_path, "p.jsonl", formats=PREFERENCE)
    assert text.startswith(
        f"data.train: in {path}, 'chosen' and 'rejected' are plain text and there is no 'prompt' column"
    )
    assert "add a 'prompt' column" in text


# --- on_invalid: skip -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["jsonl", "json"])
def test_strings_that_spell_json_stay_strings_beside_a_bad_row(tmp_path, layout):
    """datasets 5.2 stores a mixed-type column (a number among strings) without quoting the strings,
    so "4" and "true" would come back as 4 and True and be reported as bad rows: they must not."""
    rows = [
        {"prompt": "2+2=", "completion": "4"},
        {"prompt": "q", "completion": 4},  # the bad row: a number
        {"prompt": "is it?", "completion": "true"},
        {"prompt": "none?", "completion": "null"},
    ]
    path = tmp_path / f"d.{layout}"
    if layout == "json":
        path.write_text(json.dumps(rows))
    else:
        write_jsonl(path, rows)
    rejects = tmp_path / "rejects.jsonl"
    data = load(tmp_path, path.name, on_invalid="skip", rejects_path=rejects)
    assert data.train["completion"] == ["4", "true", "null"]
    assert [json.loads(line)["row"] for line in rejects.read_text().splitlines()] == [2]


def test_skip_writes_exactly_the_bad_rows_to_the_rejects_file(tmp_path):
    rows = [
        {**GOOD_PREF, "margin": 1},  # row 1: ok
        {"prompt": "q", "chosen": "a", "rejected": "a", "margin": 1},  # row 2: same answers
        {**GOOD_PREF, "margin": "high"},  # row 3: margin not a number
        {"prompt": "q", "chosen": "a", "margin": 1},  # row 4: rejected missing
        {**GOOD_PREF, "margin": 2.5},  # row 5: ok
        {"prompt": "", "chosen": "a", "rejected": "b", "margin": 1},  # row 6: empty prompt
        {**GOOD_PREF},  # row 7: no margin, while the others have one
    ]
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    rejects = tmp_path / "out" / "rejects.jsonl"
    data = load(tmp_path, "prefs.jsonl", formats=PREFERENCE, on_invalid="skip", rejects_path=rejects)
    assert data.train["margin"] == [1, 2.5]
    assert data.report["rows_rejected"] == 5
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["row"], r["line"], r["field"]) for r in records] == [
        (2, 2, "rejected"),
        (3, 3, "margin"),
        (4, 4, "rejected"),
        (6, 6, "prompt"),
        (7, 7, "margin"),
    ]
    assert {r["source"] for r in records} == {str(path)}
    assert [r["data"] for r in records] == [
        rows[1],
        rows[2],
        {**rows[3], "rejected": None},
        rows[5],
        {**rows[6], "margin": None},
    ]
    assert records[1]["reason"] == "must be a number, got the text 'high'"
    assert records[4]["reason"] == "is missing or null; give every row a margin, or drop the margin column"
