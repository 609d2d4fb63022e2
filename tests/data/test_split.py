"""The eval split (seeded, stratified) and decontamination of train against eval (rlft.data.split)."""

import json
from collections import Counter

import pydantic
import pytest

from rlft.data import DataConfig, load_stage_data
from rlft.data.split import find_contaminated, split_eval
from rlft.errors import DataError


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """Keep these tests' Arrow caches out of ~/.cache/huggingface."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows_by_topic(counts):
    return [
        {"prompt": f"{topic} question {i}", "completion": f"answer {i}", "topic": topic}
        for topic, n in counts.items()
        for i in range(n)
    ]


def load(tmp_path, train, *, rejects_path=None, formats=("prompt_completion",), **cfg):
    return load_stage_data(
        DataConfig(train=train, **cfg), formats=formats, base_dir=tmp_path, rejects_path=rejects_path
    )


# --- split ---------------------------------------------------------------------------------------


def test_stratified_split_keeps_category_shares_and_is_seeded():
    from datasets import Dataset

    ds = Dataset.from_list(rows_by_topic({"math": 50, "code": 30, "chat": 20}))
    train, evaluation, report = split_eval(ds, fraction=0.2, seed=1, stratify_by="topic")
    assert Counter(evaluation["topic"]) == {"math": 10, "code": 6, "chat": 4}
    assert Counter(train["topic"]) == {"math": 40, "code": 24, "chat": 16}
    assert not set(train["prompt"]) & set(evaluation["prompt"])
    assert report["categories"] == {
        "math": {"train": 40, "eval": 10},
        "code": {"train": 24, "eval": 6},
        "chat": {"train": 16, "eval": 4},
    }
    again = split_eval(ds, fraction=0.2, seed=1, stratify_by="topic")[1]
    other = split_eval(ds, fraction=0.2, seed=2, stratify_by="topic")[1]
    assert again["prompt"] == evaluation["prompt"]
    assert other["prompt"] != evaluation["prompt"]


def test_stratified_rounding_gives_ceil_of_the_fraction():
    from datasets import Dataset

    ds = Dataset.from_list(rows_by_topic({"a": 7, "b": 5, "c": 1}))
    train, evaluation, report = split_eval(ds, fraction=0.3, seed=0, stratify_by="topic")
    assert len(evaluation) == 4  # ceil(0.3 * 13), as train_test_split
    assert {k: v["eval"] for k, v in report["categories"].items()} == {"a": 2, "b": 2, "c": 0}
    assert len(train) + len(evaluation) == 13


def test_stratified_split_through_load_stage_data(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", rows_by_topic({"math": 40, "code": 10}))
    data = load(tmp_path, "t.jsonl", eval_fraction=0.1, stratify_by="topic", seed=3)
    assert Counter(data.eval["topic"]) == {"math": 4, "code": 1}
    assert data.report["eval"]["rows"] == 5
    assert data.report["eval"]["stratify_by"] == "topic"
    json.dumps(data.report)


def test_stratify_by_errors(tmp_path):
    write_jsonl(tmp_path / "t.jsonl", rows_by_topic({"math": 10}))
    with pytest.raises(DataError) as error:
        load(tmp_path, "t.jsonl", eval_fraction=0.1, stratify_by="domain")
    assert str(error.value) == (
        "data.stratify_by: the train rows have no column 'domain'; their columns are prompt, completion, topic"
    )
    with pytest.raises(pydantic.ValidationError, match="stratify_by shapes the eval_fraction split"):
        DataConfig(train="t.jsonl", stratify_by="topic")


# --- decontamination -----------------------------------------------------------------------------

LONG = "the quick brown fox jumps over the lazy dog while the farmer sleeps under an old oak tree"


def test_decontamination_exact_and_ngram_with_counts(tmp_path):
    train = [
        {"prompt": "What is 2+2?", "completion": "4"},  # exact (after normalisation) match
        {"prompt": f"Tell me: {LONG.upper()}, please!", "completion": "ok"},  # shares 13 words
        {"prompt": "the quick brown fox", "completion": "ok"},  # short, not equal: kept
        {"prompt": " ".join(LONG.split()[:12]) + " cat", "completion": "ok"},  # 12 words in common: kept
        {"prompt": "something else entirely", "completion": "ok"},
    ]
    evaluation = [{"prompt": "what is  2+2?", "completion": "4"}, {"prompt": LONG, "completion": "x"}]
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "eval.jsonl", evaluation)
    rejects = tmp_path / "rejects.jsonl"
    data = load(tmp_path, "train.jsonl", eval="eval.jsonl", rejects_path=rejects)
    assert data.train["prompt"] == [r["prompt"] for r in train[2:]]
    assert data.report["decontamination"] == {
        "compared": "prompt",
        "exact": 1,
        "ngram": 1,
        "ngram_size": 13,
        "removed": 2,
        "rows_after": 3,
    }
    assert data.report["train"]["rows"] == 3 and data.report["train"]["rows_before_curation"] == 5
    records = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["step"], r["data"]) for r in records] == [
        ("decontaminate", train[0]),
        ("decontaminate", train[1]),
    ]
    assert records[0]["reason"] == "prompt equals an eval row's prompt (after normalisation)"
    assert records[1]["reason"].startswith("prompt shares the 13-word sequence 'the quick brown fox jumps")
    assert data.eval["prompt"] == [r["prompt"] for r in evaluation]  # eval is never changed


def test_decontamination_settings():
    from datasets import Dataset

    train = Dataset.from_list([{"text": "a b c d e"}, {"text": "x b c d y"}, {"text": "A  B C D E"}])
    evaluation = Dataset.from_list([{"text": "a b c d e"}])

    def removed(**settings):
        removal = find_contaminated(train, evaluation, format="language_modeling", **settings)
        return sorted(removal.reasons), removal.details["exact"], removal.details["ngram"]

    assert removed(exact=True, ngram=4) == ([0, 2], 2, 0)  # row 1 shares only 3 words in a row
    assert removed(exact=False, ngram=4) == ([0, 2], 0, 2)
    assert removed(exact=True, ngram=3) == ([0, 1, 2], 2, 1)  # "b c d"
    assert removed(exact=False, ngram=None) == ([], 0, 0)
    assert removed(exact=True, ngram=13) == ([0, 2], 2, 0)  # shorter than 13 words: exact only


def test_decontamination_of_conversational_prompts():
    from datasets import Dataset

    def convo(question, answer):
        return {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
        }

    train = Dataset.from_list([convo("What is 2+2?", "4"), convo("what is 3+3?", "6")])
    evaluation = Dataset.from_list([convo("WHAT is 2+2?", "four")])
    removal = find_contaminated(train, evaluation, format="prompt_completion", exact=True, ngram=13)
    assert list(removal.reasons) == [0]


def test_decontamination_on_the_split_and_off_with_null(tmp_path):
    rows = [{"prompt": f"question {i % 10}", "completion": f"answer {i}"} for i in range(40)]  # 4 copies each
    write_jsonl(tmp_path / "t.jsonl", rows)
    rejects = tmp_path / "rejects.jsonl"
    data = load(tmp_path, "t.jsonl", eval_fraction=0.25, rejects_path=rejects)
    assert not set(data.train["prompt"]) & set(data.eval["prompt"])
    removed = data.report["decontamination"]["removed"]
    assert removed == data.report["decontamination"]["exact"] > 0
    assert len(data.train) == 30 - removed
    assert len(rejects.read_text().splitlines()) == removed
    off = load(tmp_path, "t.jsonl", eval_fraction=0.25, rejects_path=rejects, decontaminate=None)
    assert off.report["decontamination"] is None and len(off.train) == 30


def test_decontamination_without_a_rejects_file_keeps_rows_and_warns(tmp_path):
    write_jsonl(
        tmp_path / "t.jsonl", [{"prompt": "q", "completion": "a"}, {"prompt": "r", "completion": "b"}]
    )
    write_jsonl(tmp_path / "e.jsonl", [{"prompt": "q", "completion": "c"}])
    data = load(tmp_path, "t.jsonl", eval="e.jsonl")
    assert len(data.train) == 2
    assert data.report["decontamination"]["removed"] == 0
    assert (
        "1 train rows overlap the eval set (1 exact, 0 by 13-grams) and were kept"
        in data.report["warnings"][0]
    )
