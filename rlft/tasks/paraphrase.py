"""A synthetic paraphrase task for representation learning: one list of letters, written two ways.

The anchor writes a list of 3-7 letters in lower case, separated by spaces (``b q x k``); its
positive says the same in upper case, as an English list (``B, Q, X and K``); its hard negative is
the positive of a list that differs in one letter (``B, Q, Z and K``). Nothing in the two writings
shares a token but the letters' identity, so an untrained model retrieves a list's other writing
no better than chance, and a model that has learned the correspondence finds it among hundreds.
`kind: contrastive` in representation mode trains on it (configs/examples/embeddings.yaml).

Files (``write_paraphrase_data``), one JSON object per line, in rlft's contrastive format::

    train.jsonl, eval.jsonl    {"anchor": "b q x k", "positive": "B, Q, X and K", "negative": "B, Q, Z and K"}

Every letter list appears once across both files, so the eval lists are unseen in training.

    python -m rlft.tasks.paraphrase --out configs/data/paraphrase --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import string
from pathlib import Path

from rlft.tasks import write_jsonl_files

MIN_LETTERS = 3
MAX_LETTERS = 7


def spaced(letters: list[str]) -> str:
    """The anchor's writing: ``b q x k``."""
    return " ".join(letters)


def listed(letters: list[str]) -> str:
    """The positive's writing: ``B, Q, X and K``."""
    upper = [c.upper() for c in letters]
    return f"{', '.join(upper[:-1])} and {upper[-1]}"


def one_letter_changed(letters: list[str], rng: random.Random) -> list[str]:
    """The same list with one letter replaced by another: what a hard negative is made of."""
    i = rng.randrange(len(letters))
    other = rng.choice([c for c in string.ascii_lowercase if c != letters[i]])
    return [*letters[:i], other, *letters[i + 1 :]]


def paraphrase_rows(rng: random.Random, n: int, taken: set[str]) -> list[dict[str, str]]:
    """``n`` rows of letter lists not in ``taken`` (added to it)."""
    rows = []
    while len(rows) < n:
        letters = rng.choices(string.ascii_lowercase, k=rng.randint(MIN_LETTERS, MAX_LETTERS))
        if spaced(letters) in taken:
            continue
        taken.add(spaced(letters))
        negative = listed(one_letter_changed(letters, rng))
        rows.append({"anchor": spaced(letters), "positive": listed(letters), "negative": negative})
    return rows


def paraphrase_data(
    *, seed: int = 0, n_train: int = 2000, n_eval: int = 200
) -> dict[str, list[dict[str, str]]]:
    """Both splits, by file name. Same arguments, same rows; the eval rows are drawn first."""
    taken: set[str] = set()
    evaluation = paraphrase_rows(random.Random(f"paraphrase/{seed}/eval"), n_eval, taken)
    train = paraphrase_rows(random.Random(f"paraphrase/{seed}/train"), n_train, taken)
    return {"train.jsonl": train, "eval.jsonl": evaluation}


def write_paraphrase_data(out_dir: str | os.PathLike, *, seed: int = 0, **sizes: int) -> dict[str, Path]:
    """Write the JSONL files into ``out_dir``; keyword arguments as ``paraphrase_data``."""
    return write_jsonl_files(out_dir, paraphrase_data(seed=seed, **sizes), ensure_ascii=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.tasks.paraphrase", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_paraphrase_data(args.out, seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
