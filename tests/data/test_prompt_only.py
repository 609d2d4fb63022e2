"""The prompt-only format (online RL stages: PPO, GRPO, RLOO): detection as a fallback, row checks,
extra columns kept for the reward, rendering for the tokenisation report."""

import json

import pytest

from rlft.data import DataConfig, load_stage_data
from rlft.data.formats import detect_format, match_formats
from rlft.errors import DataError


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prompt_only_is_the_fallback_of_every_format_with_a_prompt():
    assert [m.format for m in match_formats(["prompt", "answer"])] == ["prompt_only"]
    assert [m.format for m in match_formats(["prompt", "chosen", "rejected"])] == ["preference"]
    assert detect_format(["prompt", "completion"], ["prompt_only"]).format == "prompt_only"
    assert (
        detect_format(["prompt", "completion"], ["prompt_completion", "prompt_only"]).format
        == "prompt_completion"
    )
    assert detect_format(["text"], ["prompt_only"]) is None


def test_prompt_rows_keep_their_other_columns_and_bad_rows_are_cited(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"shout: {c}"}], "answer": c.upper()} for c in "abc"]
    data = load_stage_data(
        DataConfig.model_validate({"train": str(write_jsonl(tmp_path / "p.jsonl", rows))}),
        formats=("prompt_only",),
        rejects_path=tmp_path / "rejects.jsonl",
    )
    assert data.format == "prompt_only" and data.conversational
    assert data.train.column_names == ["prompt", "answer"]  # `answer` reaches the reward functions

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "shout: a"}, {"prompt": "  "}])
    with pytest.raises(DataError, match=r"line 2.*field 'prompt' is empty"):
        load_stage_data(DataConfig.model_validate({"train": str(bad)}), formats=("prompt_only",))


def test_prompt_only_report_renders_the_generation_prompt(tmp_path):
    from rlft.data.tokenization import tokenization_checks
    from rlft.models.tiny import train_tokenizer

    tokenizer = train_tokenizer(["shout: a b c", "A B C"], vocab_size=300)
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" + (
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    from datasets import Dataset

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "shout: a b c"}]}])
    report = tokenization_checks(ds, tokenizer, format="prompt_only", style="conversational")
    assert report["renders"][0]["prompt"] == "<user>shout: a b c<assistant>"
    assert set(report["lengths"]) == {"prompt", "sequence"}
