"""load_stage_data: format detection, row checks and their messages, rejects, mixing, eval split."""

import json

import pydantic
import pytest

from rlft.data import DataConfig, DataSource, load_stage_data
from rlft.errors import DataError


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep these tests' Arrow caches out of ~/.cache/huggingface."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


SFT = ("language_modeling", "prompt_completion")


def msg(role, content):
    return {"role": role, "content": content}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def pc_rows(n, prefix="q"):
    return [{"prompt": f"{prefix}{i}", "completion": f"a{i}"} for i in range(n)]


def load(tmp_path, train, *, formats=SFT, rejects_path=None, **cfg):
    return load_stage_data(
        DataConfig(train=train, **cfg), formats=formats, base_dir=tmp_path, rejects_path=rejects_path
    )


# --- format detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "fmt", "style", "fields"),
    [
        ([{"text": "hello world"}], "language_modeling", "standard", ["text"]),
        (
            [{"messages": [msg("user", "hi"), msg("assistant", "yo")]}],
            "language_modeling",
            "conversational",
            ["messages"],
        ),
        ([{"prompt": "hi", "completion": "yo"}], "prompt_completion", "standard", ["prompt", "completion"]),
        (
            [
                {
                    "prompt": [msg("system", "be brief"), msg("user", "hi")],
                    "completion": [msg("assistant", "yo")],
                }
            ],
            "prompt_completion",
            "conversational",
            ["prompt", "completion"],
        ),
    ],
)
def test_detects_format_and_style(tmp_path, rows, fmt, style, fields):
    write_jsonl(tmp_path / "d.jsonl", rows)
    data = load(tmp_path, "d.jsonl")
    assert (data.format, data.report["style"], data.report["fields"]) == (fmt, style, fields)
    assert data.conversational == (style == "conversational")
    json.dumps(data.report)  # the report is JSON-serialisable


def test_no_accepted_format_lists_columns_formats_and_mapping(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(DataError) as error:
        load(tmp_path, "qa.jsonl")
    message = str(error.value)
    assert f"data.train: {tmp_path / 'qa.jsonl'} has columns question, response" in message
    assert "language_modeling: messages or text" in message
    assert "prompt_completion: prompt, completion" in message
    assert "data.fields: {prompt: question, completion: response}" in message


def test_preference_data_in_an_sft_stage_says_so(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match=r"they make preference, which this stage does not accept"):
        load(tmp_path, "p.jsonl")
    data = load(tmp_path, "p.jsonl", formats=("preference",))
    assert data.format == "preference"


def test_unpaired_columns_read_as_prompt_completion_warn(tmp_path):
    write_jsonl(tmp_path / "u.jsonl", [{"prompt": "q", "completion": "a", "label": False}])
    data = load(tmp_path, "u.jsonl")
    assert data.format == "prompt_completion"
    assert data.report["extra_columns"] == ["label"]
    assert "also make unpaired_preference" in data.report["warnings"][0]


def test_text_columns_typed_differently_is_one_error(tmp_path):
    write_jsonl(tmp_path / "m.jsonl", [{"prompt": "hi", "completion": [msg("assistant", "yo")]}] * 2)
    with pytest.raises(DataError, match=r"'prompt' holds text, 'completion' holds lists of messages"):
        load(tmp_path, "m.jsonl")


def test_sources_must_share_format_and_style(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", pc_rows(2))
    write_jsonl(tmp_path / "b.jsonl", [{"text": "hello"}])
    with pytest.raises(
        DataError,
        match=r"data\.train\[1\]: .*b\.jsonl is standard language_modeling \(text\), but data\.train\[0\]",
    ):
        load(tmp_path, ["a.jsonl", "b.jsonl"])


# --- row checks and their messages ------------------------------------------------------------


def test_invalid_jsonl_row_cites_file_line_and_field(tmp_path):
    path = tmp_path / "prefs.jsonl"
    # line 1: ok, line 2: blank, line 3: ok, line 4: empty completion (row 3)
    path.write_text(
        '{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d"}\n{"prompt": "e", "completion": ""}\n'
    )
    with pytest.raises(DataError) as error:
        load(tmp_path, "prefs.jsonl")
    message = str(error.value)
    assert message.splitlines()[0] == f"data.train: row 3 of {path} (line 4): field 'completion' is empty"
    assert "1 invalid row in data.train" in message
    assert "data.on_invalid: skip" in message


def test_invalid_csv_row_counts_header_and_multiline_values(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('prompt,completion\n"multi\nline",ok\n\nfine,ok\nq,\n')
    with pytest.raises(DataError) as error:
        load(tmp_path, "t.csv")
    assert (
        str(error.value).splitlines()[0]
        == f"data.train: row 3 of {path} (line 6): field 'completion' is empty"
    )


def test_invalid_row_in_a_glob_cites_its_own_file(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", pc_rows(3))
    write_jsonl(tmp_path / "b.jsonl", [*pc_rows(1), {"prompt": "x", "completion": None}])
    with pytest.raises(DataError) as error:
        load(tmp_path, "*.jsonl")
    expected = f"data.train: row 2 of {tmp_path / 'b.jsonl'} (line 2): field 'completion' is missing or null"
    assert str(error.value).splitlines()[0] == expected


def test_invalid_parquet_row_cites_row_index(tmp_path):
    from datasets import Dataset

    Dataset.from_list([*pc_rows(2), {"prompt": " ", "completion": "a"}]).to_parquet(
        str(tmp_path / "t.parquet")
    )
    with pytest.raises(DataError) as error:
        load(tmp_path, "t.parquet")
    assert (
        str(error.value).splitlines()[0]
        == f"data.train: row 3 of {tmp_path / 't.parquet'}: field 'prompt' is empty"
    )


def test_mapped_field_is_named_by_your_column(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "q", "answer": ""}])
    with pytest.raises(DataError) as error:
        load(tmp_path, "qa.jsonl", fields={"completion": "answer"})
    expected = f"data.train: row 1 of {path} (line 1): field 'answer' (data.fields.completion) is empty"
    assert str(error.value).splitlines()[0] == expected


def test_conversational_row_errors(tmp_path):
    rows = [
        {"prompt": [msg("user", "hi")], "completion": [msg("assistant", "yo")]},
        {"prompt": [msg("user", "hi")], "completion": [msg("user", "yo")]},
        {"prompt": [msg("robot", "hi")], "completion": [msg("assistant", "yo")]},
    ]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(DataError) as error:
        load(tmp_path, "c.jsonl")
    lines = str(error.value).splitlines()
    assert lines[0] == f"data.train: row 2 of {path} (line 2): field 'completion' has no assistant message"
    assert lines[1] == (
        f"data.train: row 3 of {path} (line 3): field 'prompt' message 1 has role 'robot'; "
        "expected one of system, user, assistant, tool"
    )


def test_mixed_styles_within_a_column_are_row_errors(tmp_path):
    rows = [{"prompt": "hi", "completion": "yo"}, {"prompt": "hi", "completion": [msg("assistant", "yo")]}]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    with pytest.raises(DataError) as error:
        load(tmp_path, "m.jsonl")
    assert str(error.value).splitlines()[0] == (
        f"data.train: row 2 of {path} (line 2): field 'completion' is a list of messages, "
        "but this dataset holds plain text: expected a string"
    )


def test_many_invalid_rows_show_five_and_the_total(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": ""}] * 12)
    with pytest.raises(DataError) as error:
        load(tmp_path, "t.jsonl")
    lines = str(error.value).splitlines()
    assert len(lines) == 6
    assert lines[4].startswith("data.train: row 5 of ")
    assert lines[5].startswith("(12 invalid rows in data.train, the first 5 shown;")


def test_invalid_eval_rows_are_cited_under_data_eval(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", pc_rows(2))
    path = write_jsonl(tmp_path / "eval.jsonl", [{"prompt": "q", "completion": ""}])
    with pytest.raises(DataError) as error:
        load(tmp_path, "train.jsonl", eval="eval.jsonl")
    assert str(error.value).startswith(f"data.eval: row 1 of {path} (line 1): field 'completion' is empty")


# --- on_invalid: skip ---------------------------------------------------------------------------


def test_skip_writes_rejects_with_reasons_and_counts(tmp_path):
    rows = [*pc_rows(3), {"prompt": "q", "answer": ""}, {"prompt": None, "answer": "a"}]
    path = tmp_path / "qa.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": r["prompt"], "answer": r.get("completion", r.get("answer"))}) + "\n"
            for r in rows
        )
    )
    rejects = tmp_path / "run" / "rejects.jsonl"
    data = load(
        tmp_path, "qa.jsonl", fields={"completion": "answer"}, on_invalid="skip", rejects_path=rejects
    )
    assert data.train["prompt"] == ["q0", "q1", "q2"]
    assert data.report["rows_rejected"] == 2
    assert data.report["train"]["rows_rejected"] == 2
    assert data.report["train"]["sources"][0]["rows_kept"] == 3
    assert data.report["rejects_path"] == str(rejects)
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert records == [
        {
            "source": str(path),
            "row": 4,
            "line": 4,
            "key": "data.train",
            "field": "answer",
            "reason": "is empty",
            "data": {"prompt": "q", "answer": ""},
        },
        {
            "source": str(path),
            "row": 5,
            "line": 5,
            "key": "data.train",
            "field": "prompt",
            "reason": "is missing or null",
            "data": {"prompt": None, "answer": "a"},
        },
    ]


def test_skip_without_a_rejects_path_refuses_to_drop_rows(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}, {"text": ""}])
    with pytest.raises(DataError, match=r"no rejects file was given"):
        load(tmp_path, "t.jsonl", on_invalid="skip")


def test_skip_with_every_row_invalid_is_an_error(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": ""}] * 3)
    with pytest.raises(DataError, match=r"data\.train: no valid rows left: all 3 were rejected"):
        load(tmp_path, "t.jsonl", on_invalid="skip", rejects_path=tmp_path / "rejects.jsonl")


def test_skip_replaces_a_stale_rejects_file(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", [{"text": "ok"}])
    rejects = tmp_path / "rejects.jsonl"
    rejects.write_text("stale\n")
    load(tmp_path, "t.jsonl", on_invalid="skip", rejects_path=rejects)
    assert rejects.read_text() == ""


# --- mixing, max_rows, eval split -----------------------------------------------------------------


def test_eval_fraction_split_is_deterministic_by_seed(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", pc_rows(50))
    first = load(tmp_path, "t.jsonl", eval_fraction=0.2, seed=1)
    again = load(tmp_path, "t.jsonl", eval_fraction=0.2, seed=1)
    other = load(tmp_path, "t.jsonl", eval_fraction=0.2, seed=2)
    assert (len(first.train), len(first.eval)) == (40, 10)
    assert first.eval["prompt"] == again.eval["prompt"]
    assert first.eval["prompt"] != other.eval["prompt"]
    assert not set(first.eval["prompt"]) & set(first.train["prompt"])
    assert first.report["eval"] == {"rows": 10, "split_from_train": 0.2, "seed": 1}


def test_no_eval_by_default_and_eval_sources(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", pc_rows(5))
    write_jsonl(tmp_path / "e.jsonl", pc_rows(2, prefix="e"))
    assert load(tmp_path, "t.jsonl").eval is None
    data = load(tmp_path, "t.jsonl", eval="e.jsonl")
    assert data.eval["prompt"] == ["e0", "e1"]
    assert data.report["eval"]["rows"] == 2


def test_max_rows_reads_the_first_rows_across_sources(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", pc_rows(3, prefix="a"))
    write_jsonl(tmp_path / "b.jsonl", pc_rows(3, prefix="b"))
    data = load(tmp_path, ["a.jsonl", "b.jsonl"], max_rows=4)
    assert data.train["prompt"] == ["a0", "a1", "a2", "b0"]
    assert [s["rows_read"] for s in data.report["train"]["sources"]] == [3, 1]


def test_max_rows_is_counted_before_invalid_rows_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"text": ""}, {"text": "c"}, {"text": ""}])
    rejects = tmp_path / "rejects.jsonl"
    data = load(tmp_path, "t.jsonl", max_rows=3, on_invalid="skip", rejects_path=rejects)
    assert data.train["text"] == ["a", "c"]
    (record,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert (record["source"], record["row"], record["line"]) == (str(path), 2, 2)


def test_weights_sample_each_source_to_its_share(tmp_path):
    write_jsonl(tmp_path / "big.jsonl", pc_rows(100, prefix="big"))
    write_jsonl(tmp_path / "small.jsonl", pc_rows(10, prefix="small"))
    train = [DataSource(path="big.jsonl", weight=3), DataSource(path="small.jsonl", weight=1)]
    data = load(tmp_path, train, seed=7)
    prompts = data.train["prompt"]
    assert sum(p.startswith("big") for p in prompts) == 30  # the mix stops when small runs out
    assert sum(p.startswith("small") for p in prompts) == 10
    assert len(set(prompts)) == len(prompts)  # no row repeated
    assert load(tmp_path, train, seed=7).train["prompt"] == prompts
    assert load(tmp_path, train, seed=8).train["prompt"] != prompts
    capped = load(tmp_path, train, seed=7, max_rows=20)
    assert [s["rows_read"] for s in capped.report["train"]["sources"]] == [15, 5]


def test_weighted_sampling_cites_rows_of_the_original_file(tmp_path):
    rows = pc_rows(10)
    rows[6]["completion"] = ""
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", pc_rows(1, prefix="b"))
    train = [DataSource(path="a.jsonl", weight=0.9), DataSource(path="b.jsonl", weight=0.1)]
    with pytest.raises(DataError) as error:
        load(tmp_path, train)
    assert (
        str(error.value).splitlines()[0]
        == f"data.train[0]: row 7 of {path} (line 7): field 'completion' is empty"
    )


def test_sources_with_different_extra_columns_are_concatenated(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "completion": "x", "answer": "1"}])
    write_jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "completion": "y"}])
    data = load(tmp_path, ["a.jsonl", "b.jsonl"])
    assert data.train["answer"] == ["1", None]


def test_config_rules():
    assert DataConfig(train="a.jsonl").train == "a.jsonl"
    with pytest.raises(pydantic.ValidationError, match="either eval .* or eval_fraction"):
        DataConfig(train="a.jsonl", eval="b.jsonl", eval_fraction=0.1)
    with pytest.raises(pydantic.ValidationError, match="unknown canonical field 'answer'"):
        DataConfig(train="a.jsonl", fields={"answer": "completion"})
    with pytest.raises(pydantic.ValidationError, match="give a weight to every source or to none"):
        DataConfig(train=[{"path": "a.jsonl", "weight": 1}, "b.jsonl"])
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        DataConfig(train="a.jsonl", shuffle=True)
    with pytest.raises(pydantic.ValidationError):
        DataConfig(train={"path": "a.jsonl", "weight": 0})


def test_eval_fraction_of_too_few_rows_is_an_error(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", pc_rows(1))
    with pytest.raises(
        DataError, match=r"data\.eval_fraction: 0\.5 of 1 train rows leaves no train or no eval rows"
    ):
        load(tmp_path, "t.jsonl", eval_fraction=0.5)
