"""rlft.tasks.reviews: >= 500 varied review requests, held-out items disjoint by name; the shipped files
are what it writes."""

import json
from pathlib import Path

from rlft.tasks.reviews import PHRASINGS, main, review_data

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "data" / "reviews"


def _text(row):
    return row["prompt"][0]["content"]


def test_counts_categories_and_phrasings():
    data = review_data()
    train, held = data["train_prompts.jsonl"], data["heldout_prompts.jsonl"]
    assert len(train) == 540 and len(held) == 180 and len(train) + len(held) >= 500
    for rows in (train, held):
        assert {r["category"] for r in rows} == {"product", "place", "media"}
        assert all(r["prompt"][0]["role"] == "user" and r["name"] in _text(r) for r in rows)
        assert len({_text(r) for r in rows}) == len(rows)  # no prompt twice
    stems = {p.split("{item}")[0].lower() for p in PHRASINGS}
    used = {s for s in stems if any(_text(r).lower().startswith(s) for r in train)}
    assert len(used) >= 8  # several phrasings


def test_heldout_names_never_appear_in_training_prompts():
    data = review_data()
    train, held = data["train_prompts.jsonl"], data["heldout_prompts.jsonl"]
    held_names = {r["name"] for r in held}
    assert held_names and not held_names & {r["name"] for r in train}
    train_text = "\n".join(_text(r) for r in train)
    assert not [name for name in held_names if name in train_text]


def test_same_seed_same_rows_and_the_shipped_files_are_what_it_writes(tmp_path):
    assert review_data(seed=1) == review_data(seed=1) != review_data(seed=2)
    main(["--out", str(tmp_path), "--seed", "0"])
    for name in ("train_prompts.jsonl", "heldout_prompts.jsonl"):
        written = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        shipped = [json.loads(line) for line in (SHIPPED / name).read_text().splitlines()]
        assert written == shipped, (
            f"configs/data/reviews/{name} is stale: python -m rlft.tasks.reviews --out configs/data/reviews"
        )
