"""The multitask example's second task: copy a list of letters in reverse order.

The user writes ``reverse: b q x k``; the right answer is ``k x q b``. A list has 3 to 7 letters
(as in the quickstart's upper-case task, ``rlft.tasks.uppercase``). How a prompt and its answer are
written is defined once, in ``reward_models.tasks`` (``reverse_prompt``, ``reverse_answer``): this
module writes the data with it, and ``reward_models.tasks.reverse_copy`` checks an answer exactly
against it.

Unlike the quickstart's, these demonstrations are clean: every completion is the right answer.
The multitask example (configs/examples/multitask.yaml) trains this task beside the upper-case
one, from the untrained tiny model, and compares each with the task trained alone.

Files (``write_reverse_data``), one JSON object per line, in TRL's conversational formats::

    sft_train.jsonl, sft_eval.jsonl    {"prompt": [user msg], "completion": [assistant msg]}
    heldout_prompts.jsonl              {"prompt": [user msg], "answer": "k x q b"}

Every prompt appears once across all files, so the held-out prompts are unseen in training.

    python -m rlft.tasks.reverse --out configs/data/reverse --seed 0
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

from reward_models.tasks import reverse_answer as answer_text
from reward_models.tasks import reverse_prompt as prompt_text
from rlft.tasks import write_jsonl_files
from rlft.tasks.uppercase import assistant, make_letters, user


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


def sft_rows(rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    """Prompt-completion demonstrations, every one right."""
    return [
        {"prompt": user(prompt_text(letters)), "completion": assistant(answer_text(letters))}
        for letters in _unique_letters(rng, n, taken)
    ]


def heldout_rows(rng: random.Random, n: int, taken: set[str]) -> list[dict]:
    """Evaluation prompts with the correct ``answer``."""
    return [
        {"prompt": user(prompt_text(letters)), "answer": answer_text(letters)}
        for letters in _unique_letters(rng, n, taken)
    ]


def reverse_data(
    *, seed: int = 0, n_sft_train: int = 2000, n_sft_eval: int = 200, n_heldout: int = 200
) -> dict[str, list[dict]]:
    """All splits, by file name. Same arguments, same rows; each split from its own seeded generator,
    the held-out prompts first (so they depend on nothing else), no prompt in two splits."""

    def rng(split: str) -> random.Random:
        return random.Random(f"reverse/{seed}/{split}")

    taken: set[str] = set()
    heldout = heldout_rows(rng("heldout"), n_heldout, taken)
    return {
        "sft_train.jsonl": sft_rows(rng("sft_train"), n_sft_train, taken),
        "sft_eval.jsonl": sft_rows(rng("sft_eval"), n_sft_eval, taken),
        "heldout_prompts.jsonl": heldout,
    }


def write_reverse_data(out_dir: str | os.PathLike, *, seed: int = 0, **sizes: int) -> dict[str, Path]:
    """Write the JSONL files into ``out_dir``; keyword arguments as ``reverse_data``."""
    return write_jsonl_files(out_dir, reverse_data(seed=seed, **sizes))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.tasks.reverse", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write the JSONL files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_reverse_data(args.out, seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
