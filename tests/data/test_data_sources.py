"""Loading sources: file types, globs, folders, field mapping, path errors, light import."""

import csv
import json
import subprocess
import sys

import pytest

from rlft.data import DataConfig, DataSource, load_stage_data
from rlft.data import sources as sources_module
from rlft.errors import DataError


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep these tests' Arrow caches out of ~/.cache/huggingface."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


SFT = ("language_modeling", "prompt_completion")
ROWS = [
    {"prompt": "2+2=", "completion": "4", "score": 1.0},
    {"prompt": "3+3=", "completion": "6", "score": 0.5},
    {"prompt": "say hi", "completion": "hi", "score": 0.0},
]


def write_jsonl(path, rows, *, blank_after=()):
    lines = []
    for i, row in enumerate(rows):
        lines.append(json.dumps(row))
        if i in blank_after:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path, rows):
    from datasets import Dataset

    Dataset.from_list(rows).to_parquet(str(path))
    return path


def load(tmp_path, train, **cfg):
    return load_stage_data(DataConfig(train=train, **cfg), formats=SFT, base_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("train.jsonl", lambda p: write_jsonl(p, ROWS, blank_after={0})),
        ("train.json", lambda p: p.write_text(json.dumps(ROWS, indent=2))),  # a list of objects
        ("lines.json", lambda p: write_jsonl(p, ROWS)),  # JSON lines in a .json file
        ("train.csv", lambda p: write_csv(p, ROWS)),
        ("train.parquet", lambda p: write_parquet(p, ROWS)),
    ],
)
def test_each_file_type_loads_the_same_rows(tmp_path, name, write):
    write(tmp_path / name)
    data = load(tmp_path, name)
    assert data.format == "prompt_completion"
    assert data.train["prompt"] == [r["prompt"] for r in ROWS]
    assert data.train["completion"] == ["4", "6", "hi"]
    assert data.train["score"] == [1.0, 0.5, 0.0]  # extra columns are kept
    assert data.report["extra_columns"] == ["score"]
    assert data.report["train"]["sources"][0]["path"] == str(tmp_path / name)


def test_csv_text_columns_keep_their_text(tmp_path):
    # pandas would read "42" as a number and "None"/"NA" as missing; in text columns they are text.
    path = tmp_path / "t.csv"
    path.write_text('prompt,answer,n\n"what is 6*7?",42,1\n"say None",None,NA\n"multi\nline",NA,3\n')
    data = load(tmp_path, "t.csv", fields={"completion": "answer"})
    assert data.train["completion"] == ["42", "None", "NA"]
    assert data.train["prompt"][2] == "multi\nline"
    assert data.train["n"] == [1, None, 3]


def test_glob_loads_files_in_sorted_order(tmp_path):
    (tmp_path / "shards").mkdir()
    write_jsonl(tmp_path / "shards" / "b.jsonl", ROWS[1:])
    write_jsonl(tmp_path / "shards" / "a.jsonl", ROWS[:1])
    data = load(tmp_path, "shards/*.jsonl")
    assert data.train["prompt"] == [r["prompt"] for r in ROWS]
    source = data.report["train"]["sources"][0]
    assert source["files"] == [str(tmp_path / "shards" / "a.jsonl"), str(tmp_path / "shards" / "b.jsonl")]


def test_folder_of_data_files(tmp_path):
    (tmp_path / "folder").mkdir()
    write_parquet(tmp_path / "folder" / "part-0.parquet", ROWS)
    assert len(load(tmp_path, "folder").train) == 3


def test_saved_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    assert load(tmp_path, "saved").train["completion"] == ["4", "6", "hi"]

    DatasetDict({"train": Dataset.from_list(ROWS), "test": Dataset.from_list(ROWS[:1])}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    data = load(tmp_path, DataSource(path="saved_dict"), eval=DataSource(path="saved_dict", split="test"))
    assert (len(data.train), len(data.eval)) == (3, 1)
    with pytest.raises(
        DataError, match=r"data\.train\.split: .*saved_dict has no split 'dev'; it has train, test"
    ):
        load(tmp_path, DataSource(path="saved_dict", split="dev"))


def test_missing_file_names_key_and_resolved_path(tmp_path):
    write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(DataError) as error:
        load(tmp_path, ["ok.jsonl", "data/missing.jsonl"])
    message = str(error.value)
    assert message.startswith("data.train[1]: ")
    assert str(tmp_path / "data" / "missing.jsonl") in message
    assert "does not exist" in message


def test_relative_paths_start_from_base_dir(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    write_jsonl(tmp_path / "configs" / "train.jsonl", ROWS)
    monkeypatch.chdir(tmp_path)  # the working directory does not matter
    data = load_stage_data(DataConfig(train="train.jsonl"), formats=SFT, base_dir=tmp_path / "configs")
    assert len(data.train) == 3


def test_path_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.train: the pattern .*\*\.jsonl matches no files"):
        load(tmp_path, "none/*.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"unsupported type '\.txt'; use \.jsonl, \.json, \.csv, \.parquet"):
        load(tmp_path, "notes.txt")
    write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data\.train\.split: files have one split"):
        load(tmp_path, DataSource(path="t.jsonl", split="test"))
    with pytest.raises(DataError, match=r"data\.train\.subset: only hub datasets have subsets"):
        load(tmp_path, DataSource(path="t.jsonl", subset="main"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl"):
        load(tmp_path, "empty.jsonl")


def test_invalid_json_cites_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n\n{"text": "b",}\n{"text": "c"}\n')
    # a line that is not JSON is one invalid row, not the end of the file
    with pytest.raises(DataError) as e:
        load(tmp_path, "bad.jsonl")
    assert str(e.value).startswith(
        f"data.train: row 2 of {tmp_path / 'bad.jsonl'} (line 3): not valid JSON: Expecting property name"
    )
    assert "(1 invalid row in data.train;" in str(e.value)


def test_a_json_array_file_that_is_not_json_cites_the_line(tmp_path):
    (tmp_path / "bad.json").write_text('[{"text": "a"},\n{"text": ]\n')
    with pytest.raises(DataError, match=r"data\.train: could not read .*bad\.json line 2: "):
        load(tmp_path, "bad.json")


def test_a_name_that_is_no_local_path_is_a_hub_dataset(tmp_path, monkeypatch):
    calls = []

    def fake_hub(resolved, source, *, key, fields, unreadable):
        from datasets import Dataset

        calls.append((resolved.label, source.subset, source.split))
        return Dataset.from_list(ROWS)

    monkeypatch.setitem(sources_module.LOADERS, "hub", fake_hub)
    data = load(tmp_path, DataSource(path="org/math", subset="easy", split="train[:3]"))
    assert calls == [("org/math", "easy", "train[:3]")]
    assert data.report["train"]["sources"][0]["type"] == "hub"


def test_field_mapping_renames_columns(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"question": r["prompt"], "answer": r["completion"]} for r in ROWS])
    data = load(tmp_path, "qa.jsonl", fields={"prompt": "question", "completion": "answer"})
    assert data.format == "prompt_completion"
    assert data.train.column_names == ["prompt", "completion"]
    assert data.report["train"]["sources"][0]["renamed"] == {"question": "prompt", "answer": "completion"}
    assert (
        "data.train: renamed column 'answer' to 'completion' (data.fields.completion)"
        in data.report["conversions"]
    )


def test_unknown_mapped_column_suggests_the_closest(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "q", "answer": "a"}])
    with pytest.raises(DataError) as error:
        load(tmp_path, "qa.jsonl", fields={"completion": "anwser"})
    message = str(error.value)
    assert message.startswith("data.fields.completion: column 'anwser' is not in ")
    assert "its columns are prompt, answer" in message
    assert "did you mean 'answer'?" in message


def test_mapping_onto_an_existing_column_is_an_error(tmp_path):
    write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "q", "completion": "a", "answer": "b"}])
    with pytest.raises(
        DataError, match=r"data\.fields\.completion: maps column 'answer' to 'completion', but"
    ):
        load(tmp_path, "qa.jsonl", fields={"completion": "answer"})


def test_importing_rlft_data_stays_light():
    code = (
        "import sys, rlft.data; "
        "print([m for m in ('datasets', 'torch', 'transformers', 'trl', 'pyarrow') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_from_stage_source_resolves_to_that_stages_file(tmp_path):
    from rlft.data.config import DataConfig, DataSource, stage_sources, with_stage_paths

    cfg = DataConfig.model_validate(
        {"train": [{"from": "gen", "weight": 2}, {"path": "x.jsonl", "weight": 1}]}
    )
    assert [(split, s.from_, s.stage_file) for split, s in stage_sources(cfg)] == [
        ("train", "gen", "pairs.jsonl")
    ]
    with pytest.raises(ValueError, match=r"data.train\[0\].from: stage 'gen' has no finished output"):
        with_stage_paths(cfg, {}, section="data")
    (tmp_path / "gen").mkdir()
    with pytest.raises(ValueError, match="wrote no pairs.jsonl"):
        with_stage_paths(cfg, {"gen": str(tmp_path / "gen")}, section="data")
    (tmp_path / "gen" / "pairs.jsonl").write_text("{}\n")
    resolved = with_stage_paths(cfg, {"gen": str(tmp_path / "gen")}, section="data")
    assert resolved.train[0] == DataSource(path=str(tmp_path / "gen" / "pairs.jsonl"), weight=2)
    assert DataSource.model_validate({"from": "gen", "file": "best_of_n"}).stage_file == "best_of_n.jsonl"
    for bad, message in (
        ({"file": "pairs", "path": "x"}, "goes with `from`"),
        ({"from": "g", "split": "test"}, "split"),
    ):
        with pytest.raises(ValueError, match=message):
            DataSource.model_validate(bad)
