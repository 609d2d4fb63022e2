"""The quickstart's verifiable task: copy a list of letters in upper case.

The user writes ``shout: b q x k``; the right answer is ``B Q X K``. A list has 3 to 7 letters.
How a prompt and its answer are written is defined once, in ``reward_models.tasks`` (this
module writes the data with it), and ``reward_models.tasks.uppercase_copy`` checks an answer
exactly against it, so every stage's effect on the task can be measured, not guessed.

The SFT demonstrations are deliberately imperfect, with a *systematic* flaw tied to a prompt
feature: for lists of ``flaw_min_length`` (5) letters or more, ``flaw_fraction`` (80%) of the
demonstrations copy the letters in lower case. Greedy decoding is mode-seeking, so after SFT the
model shouts short lists and whispers long ones: clearly above 0%, well below 100%. The preference
pairs then prefer the upper-case copy over the lowercase one (or over one with a dropped
letter), which gives the reward model, DPO and PPO something real to fix. (Random, unsystematic
corruption would not do: SFT averages it away, see DESIGN.md, "Quickstart".)

Files (``write_quickstart_data``), one JSON object per line, in TRL's conversational formats::

    sft_train.jsonl, sft_eval.jsonl    {"prompt": [user msg], "completion": [assistant msg]}
    heldout_prompts.jsonl              {"prompt": [user msg], "answer": "B Q X K"}
    prefs_train.jsonl, prefs_eval.jsonl {"prompt": [...], "chosen": [...], "rejected": [...]}

Every prompt appears once across all files, so the held-out prompts are unseen in training.

    python -m rlft.tasks.uppercase --out configs/data/quickstart --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
import string
from collections.abc import Callable
from pathlib import Path

from reward_models.tasks import shout_answer as answer_text
from reward_models.tasks import shout_prompt as prompt_text
from rlft.tasks import write_jsonl_files

MIN_LETTERS = 3
MAX_LETTERS = 7


def make_letters(rng: random.Random) -> list[str]:
    """A random list of 3-7 lowercase letters (repeats allowed)."""
    return rng.choices(string.ascii_lowercase, k=rng.randint(MIN_LETTERS, MAX_LETTERS))


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def assistant(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


# Realistic mistakes, each a function (letters, rng) -> wrong answer text.
def lowercase_copy(letters: list[str], rng: random.Random) -> str:
    """The systematic flaw of the SFT demonstrations: right letters, wrong case."""
    return " ".join(letters)


def dropped_letter(letters: list[str], rng: random.Random) -> str:
    i = rng.randrange(len(letters))
    return answer_text(letters[:i] + letters[i + 1 :])


# Rejected answers of the preference pairs: mostly the SFT flaw, which is what later stages must fix.
# Swapping two neighbouring letters was a third kind, dropped: a 2-layer reward model scored those
# pairs at chance (0.40 held-out accuracy, against 1.00 for the other two kinds).
MISTAKES: dict[Callable[[list[str], random.Random], str], float] = {
    lowercase_copy: 0.7,
    dropped_letter: 0.3,
}


def _unique_letters(rng: random.Random, n: int, taken: set[str]) -> list[list[str]]:
    """``n`` letter lists whose prompts are not in ``taken`` nor repeated; adds them to ``taken``."""
    out = []
    while len(out) < n:
        letters = make_letters(rng)
        text = prompt_text(letters)
        if text not in taken:
            taken.add(text)
            out.append(letters)
    return out


def sft_rows(
    rng: random.Random,
    n: int,
    taken: set[str],
    *,
    flaw_fraction: float = 0.8,
    flaw_min_length: int = 5,
) -> list[dict]:
    """Prompt-completion demonstrations; lists of ``flaw_min_length``+ letters are lowercase with
    probability ``flaw_fraction``."""
    rows = []
    for letters in _unique_letters(rng, n, taken):
        flawed = len(letters) >= flaw_min_length and rng.random() < flaw_fraction
        completion = lowercase_copy(letters, rng) if flawed else answer_text(letters)
        rows.append({"prompt": user(prompt_text(letters)), "completion": assistant(completion)})
    return rows


def heldout_rows(rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    """Evaluation prompts with the correct ``answer``."""
    return [
        {"prompt": user(prompt_text(letters)), "answer": answer_text(letters)}
        for letters in _unique_letters(rng, n, taken)
    ]


def preference_rows(rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    """Pairs preferring the upper-case copy over a realistic mistake (see ``MISTAKES``)."""
    kinds, weights = list(MISTAKES), list(MISTAKES.values())
    rows = []
    for letters in _unique_letters(rng, n, taken):
        mistake = rng.choices(kinds, weights)[0]
        rows.append(
            {
                "prompt": user(prompt_text(letters)),
                "chosen": assistant(answer_text(letters)),
                "rejected": assistant(mistake(letters, rng)),
            }
        )
    return rows


def quickstart_data(
    *,
    seed: int = 0,
    flaw_fraction: float = 0.8,
    flaw_min_length: int = 5,
    n_sft_train: int = 2000,
    n_sft_eval: int = 200,
    n_heldout: int = 200,
    n_prefs_train: int = 2000,
    n_prefs_eval: int = 200,
) -> dict[str, list[dict]]:
    """All quickstart splits, by file name. Same arguments, same rows.

    Each split draws from its own seeded generator (so resizing one split leaves the others' rows
    alone, except for rare prompt collisions), and no prompt appears twice across splits. The
    held-out prompts are drawn first, so they do not depend on the other splits at all.
    """

    def rng(split: str) -> random.Random:
        return random.Random(f"uppercase/{seed}/{split}")

    taken: set[str] = set()
    heldout = heldout_rows(rng("heldout"), n_heldout, taken)
    flaws = {"flaw_fraction": flaw_fraction, "flaw_min_length": flaw_min_length}
    data = {
        "sft_train.jsonl": sft_rows(rng("sft_train"), n_sft_train, taken, **flaws),
        "sft_eval.jsonl": sft_rows(rng("sft_eval"), n_sft_eval, taken, **flaws),
        "heldout_prompts.jsonl": heldout,
        "prefs_train.jsonl": preference_rows(rng("prefs_train"), n_prefs_train, taken),
        "prefs_eval.jsonl": preference_rows(rng("prefs_eval"), n_prefs_eval, taken),
    }
    train_prompts = {
        row["prompt"][0]["content"] for name in ("sft_train.jsonl", "prefs_train.jsonl") for row in data[name]
    }
    assert not train_prompts & {row["prompt"][0]["content"] for row in heldout}, (
        "held-out prompt seen in training"
    )
    return data


def write_quickstart_data(out_dir: str | os.PathLike, *, seed: int = 0, **sizes_and_flaws) -> dict[str, Path]:
    """Write the quickstart's JSONL files into ``out_dir``; keyword arguments as ``quickstart_data``."""
    return write_jsonl_files(out_dir, quickstart_data(seed=seed, **sizes_and_flaws))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rlft.tasks.uppercase", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flaw-fraction", type=float, default=0.8, help="share of long demonstrations in lower case"
    )
    args = parser.parse_args(argv)
    for name, path in write_quickstart_data(
        args.out, seed=args.seed, flaw_fraction=args.flaw_fraction
    ).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
