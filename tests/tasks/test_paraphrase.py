"""rlft.tasks.paraphrase: deterministic, disjoint paraphrase pairs; the shipped files are what it writes."""

import json
from pathlib import Path

from rlft.tasks.paraphrase import listed, main, paraphrase_data, spaced, write_paraphrase_data

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "data" / "paraphrase"


def test_one_list_written_two_ways_and_a_negative_one_letter_off():
    assert spaced(["b", "q", "x", "k"]) == "b q x k" and listed(["b", "q", "x", "k"]) == "B, Q, X and K"
    for row in paraphrase_data(n_train=300, n_eval=30)["train.jsonl"]:
        letters = row["anchor"].split(" ")
        assert row["positive"] == listed(letters)
        negative = row["negative"].replace(" and ", ", ").split(", ")
        positive = row["positive"].replace(" and ", ", ").split(", ")
        assert sum(a != b for a, b in zip(negative, positive, strict=True)) == 1


def test_same_seed_same_rows_and_eval_lists_unseen_in_training():
    data = paraphrase_data(seed=2, n_train=300, n_eval=30)
    assert data == paraphrase_data(seed=2, n_train=300, n_eval=30)
    assert data != paraphrase_data(seed=3, n_train=300, n_eval=30)
    train = {row["anchor"] for row in data["train.jsonl"]}
    evaluation = {row["anchor"] for row in data["eval.jsonl"]}
    assert len(train) == 300 and len(evaluation) == 30 and not train & evaluation
    assert paraphrase_data(seed=2, n_train=10, n_eval=30)["eval.jsonl"] == data["eval.jsonl"]  # drawn first


def test_shipped_files_equal_freshly_generated(tmp_path):
    fresh = write_paraphrase_data(tmp_path, seed=0)
    assert sorted(p.name for p in SHIPPED.glob("*.jsonl")) == sorted(fresh)
    for name, path in fresh.items():
        assert (SHIPPED / name).read_bytes() == path.read_bytes(), f"regenerate {SHIPPED}/{name}"


def test_cli_writes_the_files(tmp_path, capsys):
    main(["--out", str(tmp_path / "p"), "--seed", "0"])
    assert "eval.jsonl" in capsys.readouterr().out
    lines = (tmp_path / "p" / "eval.jsonl").read_text().splitlines()
    assert len(lines) == 200 and list(json.loads(lines[0])) == ["anchor", "positive", "negative"]
