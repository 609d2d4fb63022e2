"""The data report (`data_report`, `write_report`, `print_report`) and `rlft data inspect`."""

import json
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.data import DataConfig, load_stage_data
from rlft.data.inspect import inspect_data
from rlft.data.report import LENGTHS_PNG, REPORT_JSON, data_report, histogram, print_report, write_report
from rlft.errors import DataError

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart"


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from rlft.models.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(["hello world", "shout: a b c", "A B C", "the sky is blue"] * 10).save_pretrained(path)
    return path


def msg(role, content):
    return {"role": role, "content": content}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": "Hello  world", "completion": "hi", "topic": "greet"},
    {"prompt": "hello world ", "completion": "HI", "topic": "greet"},  # a duplicate once normalised
    {"prompt": "the sky is", "completion": "blue", "topic": "sky"},
    {"prompt": "the sea is", "completion": "", "topic": "sea"},  # invalid: empty completion
]


def console():
    from rich.console import Console

    return Console(record=True, width=120)


def test_report_without_tokenizer_counts_characters(tmp_path):
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    data = load_stage_data(
        DataConfig(train="d.jsonl", on_invalid="skip"),
        formats=("prompt_completion",),
        base_dir=tmp_path,
        rejects_path=tmp_path / "rejects.jsonl",
    )
    report = data_report(
        data.train, format=data.format, style="standard", category_column="topic", validation=data.report
    )
    assert (report["rows"], report["format"], report["fields"], report["extra_columns"]) == (
        3,
        "prompt_completion",
        ["prompt", "completion"],
        ["topic"],
    )
    assert report["lengths"]["unit"] == "characters"
    assert report["lengths"]["fields"]["prompt"]["max"] == 12
    assert report["lengths"]["fields"]["sequence"]["max"] == 14  # "Hello  world" + "hi"
    assert report["duplicates"]["rows"] == 1
    assert report["invalid"] == {
        "rows": 1,
        "of": 4,
        "on_invalid": "skip",
        "rejects_path": str(tmp_path / "rejects.jsonl"),
    }
    assert report["balance"] == {
        "column": "topic",
        "categories": 2,
        "counts": {"greet": 2, "sky": 1},
        "shares": {"greet": 2 / 3, "sky": 1 / 3},
    }
    assert report["tokenization"] is None
    json.dumps(report)


def test_report_with_tokenizer_has_token_lengths_and_checks(tmp_path, tokenizer_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ds = Dataset.from_list(
        [{"prompt": [msg("user", "shout: a b c")], "completion": [msg("assistant", "A B C")]}] * 3
    )
    report = data_report(ds, format="prompt_completion", style="conversational", tokenizer=tok, max_length=4)
    assert report["lengths"]["unit"] == "tokens"
    assert report["lengths"]["fields"] == report["tokenization"]["lengths"]
    assert report["tokenization"]["over_max_length"] == 3
    assert report["duplicates"]["rows"] == 2
    assert report["invalid"] is None


def test_unpaired_reports_label_balance_and_unknown_category_is_an_error():
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {"prompt": "q", "completion": c, "label": label}
            for c, label in [("a", True), ("b", False), ("c", True)]
        ]
    )
    report = data_report(ds, format="unpaired_preference", style="standard")
    assert report["balance"]["counts"] == {"true": 2, "false": 1}
    with pytest.raises(
        DataError, match=r"category column 'topic' is not in the data; its columns are prompt"
    ):
        data_report(ds, format="unpaired_preference", style="standard", category_column="topic")


def test_histogram_bins_integers_whole():
    assert histogram([1, 2, 2, 4]) == {"edges": [0.5, 1.5, 2.5, 3.5, 4.5], "counts": [1, 2, 0, 1]}
    wide = histogram(list(range(100)), bins=10)
    assert len(wide["counts"]) == 10 and sum(wide["counts"]) == 100
    assert histogram([]) == {"edges": [], "counts": []}


def test_write_and_print_report(tmp_path):
    from datasets import Dataset

    ds = Dataset.from_list([{"text": "hello world"}, {"text": "the sky is blue"}])
    report = data_report(ds, format="language_modeling", style="standard")
    written = write_report(report, tmp_path / "out")
    assert written == [tmp_path / "out" / REPORT_JSON, tmp_path / "out" / LENGTHS_PNG]
    assert json.loads(written[0].read_text()) == report
    assert written[1].read_bytes().startswith(b"\x89PNG")
    out = console()
    print_report(report, out)
    text = out.export_text()
    assert "language_modeling (standard)" in text
    assert "lengths in characters" in text


# --- rlft data inspect ----------------------------------------------------------------------------


def test_inspect_counts_invalid_rows_and_writes_the_report(tmp_path, tokenizer_dir):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": r["prompt"], "answer": r["completion"]} for r in ROWS])
    out = tmp_path / "report"
    report, written = inspect_data(
        "qa.jsonl",
        fields={"prompt": "question", "completion": "answer"},
        tokenizer=str(tokenizer_dir),
        max_length=64,
        out_dir=out,
        base_dir=tmp_path,
    )
    assert report["format"] == "prompt_completion"
    assert report["invalid"]["rows"] == 1
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["row"], r["field"]) for r in rejects] == [(4, "answer")]
    assert report["invalid"]["examples"] == [
        f"row 4 of {tmp_path / 'qa.jsonl'} (line 4): field 'answer' is empty"
    ]
    assert report["tokenization"]["rows_checked"] == 3
    assert (
        "data.train: renamed column 'answer' to 'completion' (data.fields.completion)"
        in report["conversions"]
    )
    assert written == [out / REPORT_JSON, out / LENGTHS_PNG]


def test_inspect_extracts_an_implicit_prompt_and_says_so(tmp_path):
    rows = [
        {
            "chosen": [msg("user", "q"), msg("assistant", "A")],
            "rejected": [msg("user", "q"), msg("assistant", "b")],
        }
    ] * 2
    write_jsonl(tmp_path / "p.jsonl", rows)
    report, _ = inspect_data("p.jsonl", format="preference", out_dir=tmp_path / "r", base_dir=tmp_path)
    assert (report["format_loaded"], report["format"], report["fields"]) == (
        "implicit_preference",
        "preference",
        ["prompt", "chosen", "rejected"],
    )
    assert report["conversions"] == [
        "data.train: extracted the implicit prompt: the messages chosen and rejected both begin with became "
        "'prompt' (2 -> 2 rows)"
    ]


def test_inspect_unknown_columns_suggests_the_field_flag(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(DataError, match=r"map a column with --field CANONICAL=COLUMN"):
        inspect_data("qa.jsonl", out_dir=tmp_path / "r", base_dir=tmp_path)


def test_cli_inspect_on_the_quickstart_preferences(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "120")
    out = tmp_path / "report"
    assert (
        main(
            [
                "data",
                "inspect",
                str(QUICKSTART / "prefs_train.jsonl"),
                "--format",
                "preference",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "preference (conversational)" in printed
    assert "2,000" in printed
    report = json.loads((out / REPORT_JSON).read_text())
    assert (report["rows"], report["invalid"]["rows"], report["duplicates"]["rows"]) == (2000, 0, 0)
    assert (out / LENGTHS_PNG).is_file()


def test_cli_inspect_errors_are_one_line(tmp_path, capsys):
    assert main(["data", "inspect", "x.jsonl", "--field", "oops"]) == 2
    assert "--field oops: write CANONICAL=COLUMN" in capsys.readouterr().err
    assert main(["data", "inspect", "x.jsonl", "--max-length", "8"]) == 2
    assert "--max-length counts tokens: give --tokenizer too" in capsys.readouterr().err
    assert main(["data", "inspect", "x.jsonl", "--field", "answer=completion", "--out", str(tmp_path)]) == 2
    assert "--field: unknown canonical field 'answer'" in capsys.readouterr().err
