"""rlft.tasks.uppercase: deterministic, disjoint, deliberately flawed quickstart data."""

import json
from pathlib import Path

import pytest

from reward_models.tasks import uppercase_copy
from rlft.tasks.uppercase import MAX_LETTERS, MIN_LETTERS, main, quickstart_data, write_quickstart_data

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "data" / "quickstart"
SMALL = {"n_sft_train": 300, "n_sft_eval": 30, "n_heldout": 50, "n_prefs_train": 200, "n_prefs_eval": 20}


def letters_of(row):
    return row["prompt"][0]["content"].removeprefix("shout: ").split(" ")


def text(messages):
    (message,) = messages
    return message["content"]


def prompts(rows):
    return {row["prompt"][0]["content"] for row in rows}


def test_same_seed_same_rows_other_seed_other_rows():
    assert quickstart_data(seed=3, **SMALL) == quickstart_data(seed=3, **SMALL)
    assert (
        quickstart_data(seed=3, **SMALL)["sft_train.jsonl"]
        != quickstart_data(seed=4, **SMALL)["sft_train.jsonl"]
    )


def test_heldout_prompts_do_not_depend_on_other_split_sizes():
    small = quickstart_data(**SMALL)["heldout_prompts.jsonl"]
    assert quickstart_data(**{**SMALL, "n_sft_train": 10})["heldout_prompts.jsonl"] == small


def test_shipped_files_equal_freshly_generated(tmp_path):
    fresh = write_quickstart_data(tmp_path, seed=0)
    assert sorted(p.name for p in SHIPPED.glob("*.jsonl")) == sorted(fresh)
    for name, path in fresh.items():
        assert (SHIPPED / name).read_bytes() == path.read_bytes(), f"regenerate {SHIPPED}/{name}"


def test_cli_writes_the_files(tmp_path, capsys):
    main(["--out", str(tmp_path / "qs"), "--seed", "0"])
    assert "heldout_prompts.jsonl" in capsys.readouterr().out
    lines = (tmp_path / "qs" / "prefs_eval.jsonl").read_text().splitlines()
    assert len(lines) == 200 and list(json.loads(lines[0])) == ["prompt", "chosen", "rejected"]


def test_every_prompt_once_and_heldout_unseen():
    data = quickstart_data(**SMALL)
    all_prompts = [row["prompt"][0]["content"] for rows in data.values() for row in rows]
    assert len(all_prompts) == len(set(all_prompts))
    train = prompts(data["sft_train.jsonl"]) | prompts(data["prefs_train.jsonl"])
    assert not train & prompts(data["heldout_prompts.jsonl"])


def test_rows_have_the_trl_conversational_shapes():
    data = quickstart_data(**SMALL)
    for row in data["sft_train.jsonl"]:
        assert list(row) == ["prompt", "completion"]
        assert row["prompt"][0]["role"] == "user" and row["completion"][0]["role"] == "assistant"
        assert MIN_LETTERS <= len(letters_of(row)) <= MAX_LETTERS
        assert all(len(c) == 1 and c.islower() for c in letters_of(row))
    for row in data["heldout_prompts.jsonl"]:
        assert list(row) == ["prompt", "answer"]
        assert row["answer"] == " ".join(letters_of(row)).upper()


@pytest.mark.parametrize("flaw_fraction", [0.0, 0.5, 0.8, 1.0])
def test_flaw_is_lowercase_on_long_lists_at_the_configured_rate(flaw_fraction):
    rows = quickstart_data(flaw_fraction=flaw_fraction, **{**SMALL, "n_sft_train": 2000})["sft_train.jsonl"]
    rewards = uppercase_copy([r["prompt"] for r in rows], [r["completion"] for r in rows])
    short = [w for r, w in zip(rows, rewards, strict=True) if len(letters_of(r)) < 5]
    long = [(r, w) for r, w in zip(rows, rewards, strict=True) if len(letters_of(r)) >= 5]
    assert all(w == 1.0 for w in short)  # short lists are always demonstrated correctly
    flawed = [r for r, w in long if w == 0.0]
    assert all(text(r["completion"]) == " ".join(letters_of(r)) for r in flawed)  # the flaw is lower case
    assert len(flawed) / len(long) == pytest.approx(flaw_fraction, abs=0.05)


def test_preferences_prefer_the_correct_answer():
    rows = quickstart_data(**{**SMALL, "n_prefs_train": 1000})["prefs_train.jsonl"]
    prompts_ = [r["prompt"] for r in rows]
    assert uppercase_copy(prompts_, [r["chosen"] for r in rows]) == [1.0] * len(rows)
    assert uppercase_copy(prompts_, [r["rejected"] for r in rows]) == [0.0] * len(rows)
    lowercase = sum(text(r["rejected"]) == " ".join(letters_of(r)) for r in rows) / len(rows)
    assert 0.6 < lowercase < 0.8  # mostly the SFT flaw, with dropped letters too
