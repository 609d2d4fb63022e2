"""The eval split (seeded, optionally stratified) and decontamination of train against eval.

Split: with no eval source, `eval_fraction` of the train rows is held out. Without
`stratify_by` this is `datasets`' `train_test_split` (seeded; both parts shuffled). With
`stratify_by: column`, every value of the column keeps its share in both parts: each category
gives round(fraction * its rows) to eval, rounded so the total is ceil(fraction * rows)
(largest remainders first), sampled with the seed; rows keep their file order.

Decontamination (`decontaminate`, on by default whenever there is an eval set, from a source or
the split): a train row is removed when its prompt
- equals an eval prompt after normalisation (NFKC, lowercase, collapsed whitespace), `exact`; or
- shares any run of `ngram` words with an eval prompt (words: `\\w+` runs of the normalised
  text, so punctuation does not count), as in GPT-3's contamination analysis (Brown et al.
  2020, appendix C: overlaps of up to 13 words). Prompts shorter than `ngram` words can match
  exactly only.
The prompt is the `prompt` field; an implicit preference row's prompt is the messages chosen and
rejected begin with; contrastive rows compare their `anchor`; language-modelling rows have no
prompt, so their whole text (or conversation) is compared. Removed rows go to the rejects file
with the reason. A caller that gives no rejects file (a notebook; a stage always gives one) gets
the overlapping rows kept and a warning in the report instead.
"""

from __future__ import annotations

import math
import random
import re
from typing import TYPE_CHECKING

from rlft.data.curate import (
    Removal,
    category,
    iter_rows,
    normalize,
    prompt_and_responses,
    render,
    text_fields,
)
from rlft.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset

WORD = re.compile(r"\w+")


def split_eval(
    train: Dataset, *, fraction: float, seed: int, stratify_by: str | None = None, section: str = "data"
) -> tuple[Dataset, Dataset, dict]:
    """(train, eval, report): `fraction` of `train` held out, seeded; stratified by a column if given."""
    report = {"split_from_train": fraction, "seed": seed}
    too_few = DataError(
        f"{section}.eval_fraction: {fraction} of {len(train)} train rows leaves no train or no eval rows; "
        "use more rows, another fraction, or an eval source"
    )
    if stratify_by is None:
        try:
            parts = train.train_test_split(test_size=fraction, seed=seed)
        except ValueError as e:
            raise too_few from e
        return parts["train"], parts["test"], report
    if stratify_by not in train.column_names:
        raise DataError(
            f"{section}.stratify_by: the train rows have no column {stratify_by!r}; "
            f"their columns are {', '.join(train.column_names)}"
        )
    groups: dict[str, list[int]] = {}  # category -> its rows, in order of first appearance
    for i, row in enumerate(iter_rows(train, (stratify_by,))):
        groups.setdefault(category(row[stratify_by]), []).append(i)
    quotas = _stratified_quotas({name: len(rows) for name, rows in groups.items()}, fraction)
    if sum(quotas.values()) in (0, len(train)):
        raise too_few
    rng = random.Random(seed)
    held_out = sorted(i for name, rows in groups.items() for i in rng.sample(rows, quotas[name]))
    held = set(held_out)
    kept = [i for i in range(len(train)) if i not in held]
    report["stratify_by"] = stratify_by
    report["categories"] = {
        name: {"train": len(rows) - quotas[name], "eval": quotas[name]} for name, rows in groups.items()
    }
    return train.select(kept), train.select(held_out), report


def _stratified_quotas(counts: dict[str, int], fraction: float) -> dict[str, int]:
    """Eval rows per category: floor(fraction * count) each, then one more for the categories with
    the largest remainders (ties: first category first) until the total is ceil(fraction * rows)."""
    total = math.ceil(fraction * sum(counts.values()))
    quotas = {name: math.floor(fraction * n) for name, n in counts.items()}
    by_remainder = sorted(counts, key=lambda name: -(fraction * counts[name] - quotas[name]))
    for name in by_remainder[: total - sum(quotas.values())]:
        quotas[name] += 1
    return quotas


# format -> what decontamination compares, for the report and the reasons
COMPARED = {
    "language_modeling": "text",
    "implicit_preference": "prompt (the messages chosen and rejected begin with)",
    "contrastive": "anchor",
}


def compared_text(row: dict, format: str) -> str:
    """The normalised text decontamination compares: the prompt, else the anchor (contrastive),
    else the whole text (language modelling)."""
    if format == "contrastive":
        return normalize(row["anchor"])
    prompt, responses = prompt_and_responses(row, format)
    return normalize(render(prompt if prompt is not None else next(iter(responses.values()))))


def find_contaminated(
    train: Dataset, evaluation: Dataset, *, format: str, exact: bool, ngram: int | None
) -> Removal:
    """Train rows whose prompt equals an eval row's prompt after normalisation, or shares an
    `ngram`-word run with one. The report counts {"exact": k, "ngram": m}; a row counts once,
    exact first."""
    what = COMPARED.get(format, "prompt")
    short = what.split(" (")[0]
    eval_texts: set[str] = set()
    # Hashes of the eval n-grams, not the n-grams: a tenth of the memory; a false match needs a
    # 64-bit collision, about one in 10^7 even for 10^6 eval n-grams against 10^8 train ones.
    eval_ngrams: set[int] = set()
    for row in iter_rows(evaluation, text_fields(evaluation, format)):
        text = compared_text(row, format)
        eval_texts.add(text)
        if ngram:
            words = WORD.findall(text)
            eval_ngrams.update(hash(" ".join(words[j : j + ngram])) for j in range(len(words) - ngram + 1))
    removal = Removal(details={"compared": what, "exact": 0, "ngram": 0, "ngram_size": ngram})
    for i, row in enumerate(iter_rows(train, text_fields(train, format))):
        text = compared_text(row, format)
        if exact and text in eval_texts:
            removal.reasons[i] = f"{short} equals an eval row's {short} (after normalisation)"
            removal.details["exact"] += 1
            continue
        if not eval_ngrams:
            continue
        words = WORD.findall(text)
        for j in range(len(words) - ngram + 1):
            gram = " ".join(words[j : j + ngram])
            if hash(gram) in eval_ngrams:
                removal.reasons[i] = (
                    f"{short} shares the {ngram}-word sequence {gram!r} with an eval row's {short}"
                )
                removal.details["ngram"] += 1
                break
    return removal
