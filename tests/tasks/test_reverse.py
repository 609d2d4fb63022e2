"""rlft.tasks.reverse: deterministic, disjoint, clean data for the multitask example's second task."""

from pathlib import Path

from reward_models.tasks import reverse_copy
from rlft.tasks.reverse import main, reverse_data, write_reverse_data
from rlft.tasks.uppercase import MAX_LETTERS, MIN_LETTERS

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "data" / "reverse"
SMALL = {"n_sft_train": 300, "n_sft_eval": 30, "n_heldout": 50}


def prompts(rows):
    return {row["prompt"][0]["content"] for row in rows}


def test_same_seed_same_rows_and_every_prompt_once():
    data = reverse_data(seed=3, **SMALL)
    assert data == reverse_data(seed=3, **SMALL)
    assert data["sft_train.jsonl"] != reverse_data(seed=4, **SMALL)["sft_train.jsonl"]
    everything = [row["prompt"][0]["content"] for rows in data.values() for row in rows]
    assert len(everything) == len(set(everything))  # held-out prompts unseen in training


def test_demonstrations_and_answers_are_right_by_the_verifier():
    data = reverse_data(**SMALL)
    sft = data["sft_train.jsonl"]
    assert reverse_copy([r["prompt"] for r in sft], [r["completion"] for r in sft]) == [1.0] * len(sft)
    heldout = data["heldout_prompts.jsonl"]
    assert reverse_copy([r["prompt"] for r in heldout], [r["answer"] for r in heldout]) == [1.0] * len(
        heldout
    )
    lengths = {len(r["prompt"][0]["content"].removeprefix("reverse: ").split()) for r in sft}
    assert lengths == set(range(MIN_LETTERS, MAX_LETTERS + 1))


def test_shipped_files_equal_freshly_generated(tmp_path, capsys):
    main(["--out", str(tmp_path), "--seed", "0"])
    assert "heldout_prompts.jsonl" in capsys.readouterr().out
    fresh = write_reverse_data(tmp_path / "again", seed=0)
    assert sorted(p.name for p in SHIPPED.glob("*.jsonl")) == sorted(fresh)
    for name, path in fresh.items():
        assert (SHIPPED / name).read_bytes() == path.read_bytes() == (tmp_path / name).read_bytes(), (
            f"regenerate {SHIPPED}/{name}"
        )
