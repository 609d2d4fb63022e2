"""Curation of a stage's train rows: each step a small function over a `datasets.Dataset`.

| step                   | what it removes (or changes)                                          |
|------------------------|-----------------------------------------------------------------------|
| `dedup`                | rows whose text equals an earlier row's, after normalisation           |
| `near_dedup`           | rows whose text is a near-duplicate of an earlier kept row (MinHash)   |
| `drop_identical_pairs` | preference pairs whose chosen and rejected are the same                |
| `length`               | rows outside token-count bounds of the stage's tokenizer               |
| `balance`              | rows beyond a category's share (seeded downsampling)                   |
| `flip`                 | nothing: swaps chosen/rejected (flips `label`) on a share of the rows  |

The steps run in that order; flip runs last, so it flips the stated share of the final rows.
Curation applies to the train rows only, after the eval split: the eval set is measured as it
was given (decontamination, in `rlft.data.split`, then removes train rows that overlap it).

A row's *text* is its format's text fields (prompt + chosen + rejected; chosen + rejected;
prompt + completion; text or messages; anchor + positive + negative), each normalised: NFKC,
lowercase, whitespace collapsed to one space; a list of messages is rendered as `role: content`
lines first. For unpaired preference the label is not part of the text: of two rows with the
same text and different labels, the first is kept. A *prompt* and its *responses* (for length)
are prompt and completion, or chosen and rejected; implicit preference rows' prompt is the
messages chosen and rejected begin with; language-modelling rows are all response.

Each `find_*` function is pure: it reads a dataset and returns a `Removal` (the rows to drop
and why); `curate` runs the configured steps, writes every dropped row to the rejects file
(`{"step", "key", "reason", "data", ...}`) and reports one entry per step. Nothing is
dropped silently: without a rejects file, a step that would drop rows raises instead.

`datasets`, `datasketch` and numpy are imported inside functions: `import rlft.data` stays light.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlft.data.config import CurateConfig
from rlft.data.formats import CONVERSATIONAL, common_prefix, detect_format
from rlft.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset

    from rlft.data.validate import Rejects

BATCH_ROWS = 1000  # rows read from Arrow at a time
# Shingles permuted per numpy call: a (num_perm, 8192) uint32 buffer, 4 MiB at 128. Measured on
# the benchmark's rows: 2048 and 4096 took 2x and 1.3x as long (per-call costs), 16384 no less.
PERMUTE_SHINGLES = 8192
PAIRED = ("preference", "implicit_preference")  # chosen/rejected pairs
LABELLED = (*PAIRED, "unpaired_preference")  # formats whose labels flip_fraction can flip
RESPONSES = ("completion", "chosen", "rejected")  # the fields length bounds as responses


@dataclass
class Removal:
    """The rows a step drops, as indices into the dataset it read."""

    reasons: dict[int, str] = field(default_factory=dict)  # row -> why it goes
    duplicate_of: dict[int, int] = field(default_factory=dict)  # row -> the kept row it repeats
    details: dict[str, Any] = field(default_factory=dict)  # extra report fields, JSON-serialisable


# --- text ----------------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """NFKC, lowercase, every run of whitespace one space, no leading or trailing space."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def render(value: Any) -> str:
    """A text field as one string: a string as is, a list of messages as `role: content` lines."""
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in value)
    return "" if value is None else str(value)


def text_fields(ds: Dataset, format: str) -> tuple[str, ...]:
    """The text fields of `format` in `ds`: ("prompt", "chosen", "rejected"), ("messages",), ..."""
    detected = detect_format(ds.column_names, [format])
    if detected is None:
        raise ValueError(f"columns {ds.column_names} do not make format {format!r}")
    return detected.text_fields


def iter_rows(ds: Dataset, columns: Sequence[str]) -> Iterator[dict]:
    """The rows of `ds`, only these columns, read in Arrow batches."""
    for batch in ds.select_columns(list(columns)).iter(batch_size=BATCH_ROWS):
        n = len(batch[columns[0]])
        for j in range(n):
            yield {c: batch[c][j] for c in columns}


def prompt_and_responses(row: dict, format: str) -> tuple[Any, dict[str, Any]]:
    """A row as (prompt, {response field: value}). The prompt is None for language modelling
    (its text or messages is the one response); an implicit preference row's prompt is the
    messages chosen and rejected begin with, and its responses what follows them."""
    if format == "implicit_preference":
        n = common_prefix(row["chosen"], row["rejected"])
        return row["chosen"][:n], {"chosen": row["chosen"][n:], "rejected": row["rejected"][n:]}
    if format == "language_modeling":
        name = "messages" if "messages" in row else "text"
        return None, {name: row[name]}
    return row.get("prompt"), {f: row[f] for f in RESPONSES if f in row}


def normalized_texts(ds: Dataset, fields: Sequence[str]) -> Iterator[str]:
    """Each row's normalised text: its fields, normalised, joined by a NUL (never in normal text)."""
    for batch in ds.select_columns(list(fields)).iter(batch_size=BATCH_ROWS):
        columns = [[normalize(render(value)) for value in batch[f]] for f in fields]
        yield from map("\x00".join, zip(*columns, strict=True))


# --- steps ---------------------------------------------------------------------------------------


def find_exact_duplicates(ds: Dataset, *, fields: Sequence[str]) -> Removal:
    """Rows whose normalised text equals an earlier row's; the first occurrence is kept."""
    seen: dict[bytes, int] = {}  # a 128-bit digest of the text -> its first row
    removal = Removal()
    for i, text in enumerate(normalized_texts(ds, fields)):
        first = seen.setdefault(hashlib.blake2b(text.encode(), digest_size=16).digest(), i)
        if first != i:
            removal.reasons[i] = (
                "exact duplicate of an earlier row (equal text after NFKC, lowercase and collapsed whitespace)"
            )
            removal.duplicate_of[i] = first
    return removal


def shingle_hashes(texts: Sequence[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of the character `size`-grams of each text (of the whole text when it is
    shorter; none for an empty text), repeats included (they do not change a minimum), as
    (hashes (S,) uint32, bounds (N + 1,)): text i's are hashes[bounds[i] : bounds[i + 1]].

    A polynomial rolling hash over the code points of all the texts joined, in numpy, keeping the
    windows that lie inside one text: one pass for a batch of rows instead of one per row. The
    values are those the per-row version (and so the MinHash signatures) had; MinHash mixes them
    again before permuting them."""
    import numpy as np

    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))  # code points, (N,)
    ends = np.cumsum(lengths)
    points = np.frombuffer("".join(texts).encode("utf-32-le"), dtype=np.uint32)
    windows = _rolling_hashes(points, size)  # one per start position of the joined text
    inside = np.ones(len(windows), dtype=bool)  # windows ending past their text's end are not
    for k in range(1, size):
        inside[ends[(ends >= k) & (ends - k < len(windows))] - k] = False
    counts = np.where(lengths >= size, lengths - size + 1, np.minimum(lengths, 1))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    hashes = np.empty(bounds[-1], dtype=np.uint32)
    short = np.flatnonzero((lengths > 0) & (lengths < size))  # hashed whole: one value each
    whole = np.zeros(len(hashes), dtype=bool)
    whole[bounds[short]] = True
    hashes[~whole] = windows[inside]
    hashes[whole] = [
        _rolling_hashes(points[e - n : e], n)[0] for e, n in zip(ends[short], lengths[short], strict=True)
    ]
    return hashes, bounds


def _rolling_hashes(points: np.ndarray, size: int) -> np.ndarray:
    """The hash of each `size` consecutive code points (uint32 (L,) -> uint32 (L - size + 1,)): a
    polynomial modulo 2^64, its high bits folded into the low 32 kept."""
    import numpy as np

    count = max(0, len(points) - size + 1)
    hashes = points[:count].astype(np.uint64)
    for j in range(1, size):  # h = sum of points[i + j] * P^(size - 1 - j), modulo 2^64
        hashes *= np.uint64(0x100000001B3)
        hashes += points[j : j + count]
    hashes ^= hashes >> np.uint64(29)
    return hashes.astype(np.uint32)  # the low 32 bits


def minhash_permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), (num_perm,) uint32 each, a odd: permutation k is x -> a[k] * x + b[k] modulo 2^32,
    a bijection on 32-bit values. Drawn as datasketch 2's MinHash draws its scheme "affine32"."""
    import numpy as np

    rng = np.random.RandomState(seed % 2**32)
    a = rng.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = rng.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def minhash_signatures(hashes: np.ndarray, bounds: np.ndarray, *, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures (N, num_perm) uint32 of the rows' shingle hashes (see `shingle_hashes`):
    value k of row i is the least a[k] * fmix32(h) + b[k] modulo 2^32 over the row's hashes h.

    fmix32 is MurmurHash3's finalizer, a bijection that spreads weakly mixed inputs; with
    `minhash_permutations` these are exactly datasketch 2's MinHash(scheme="affine32",
    hashfunc=int) values (a test checks), and an empty row's are all 2^32 - 1 as there. Computed
    for many rows at once: each numpy call permutes `PERMUTE_SHINGLES` shingles of consecutive
    rows and takes each row's minimum with `np.minimum.reduceat`, instead of one MinHash object
    and a Python list per row."""
    import numpy as np

    a, b = minhash_permutations(num_perm, seed)
    x = hashes ^ (hashes >> np.uint32(16))  # fmix32
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    x *= np.uint32(0xC2B2AE35)
    x ^= x >> np.uint32(16)
    signatures = np.full((len(bounds) - 1, num_perm), 0xFFFFFFFF, dtype=np.uint32)
    rows = np.flatnonzero(bounds[:-1] < bounds[1:])  # rows with shingles; their starts increase
    starts = bounds[rows]
    permuted = np.empty((num_perm, PERMUTE_SHINGLES), dtype=np.uint32)
    for begin in range(0, len(x), PERMUTE_SHINGLES):
        end = min(begin + PERMUTE_SHINGLES, len(x))
        # segments of [begin, end): one per row, the first maybe the rest of a row begun before
        first, last = np.searchsorted(starts, [begin, end])
        if first == last or starts[first] != begin:
            first -= 1
        segment_rows = rows[first:last]
        offsets = np.maximum(starts[first:last], begin) - begin
        chunk = permuted[:, : end - begin]
        np.multiply(a[:, None], x[None, begin:end], out=chunk)
        chunk += b[:, None]
        lows = np.minimum.reduceat(chunk, offsets, axis=1).T  # (segments, num_perm)
        signatures[segment_rows] = np.minimum(signatures[segment_rows], lows)
    return signatures


def band_groups(signatures: np.ndarray, *, bands: int, band_size: int) -> tuple[np.ndarray, np.ndarray]:
    """LSH banding (Leskovec et al., Mining of Massive Datasets, ch. 3.4): band k of a signature
    is its values k * band_size ... (k + 1) * band_size - 1, and rows whose band k is equal share
    group k.
    Returns (group (bands, N) int64, shared (bands, N) bool: the group has another row). As
    datasketch's MinHashLSH: bands compared exactly, values past bands * band_size unused."""
    import numpy as np

    groups = np.empty((bands, len(signatures)), dtype=np.int64)
    shared = np.empty((bands, len(signatures)), dtype=bool)
    for k in range(bands):
        band = np.ascontiguousarray(signatures[:, k * band_size : (k + 1) * band_size])
        keys = band.view(np.dtype((np.void, band.itemsize * band_size))).ravel()  # one value per row
        _, groups[k], counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared[k] = counts[groups[k]] > 1
    return groups, shared


def find_near_duplicates(
    ds: Dataset, *, fields: Sequence[str], threshold: float, num_perm: int, shingle: int, seed: int
) -> Removal:
    """Rows whose text is a near-duplicate of an earlier kept row.

    Each row's normalised text becomes a set of character `shingle`-grams (characters, not words:
    alignment rows are short, and a set of character shingles changes little when one word does)
    and a MinHash signature of `num_perm` permutations seeded by `seed` (Broder 1997). LSH banding
    over the signatures proposes candidates; a candidate counts when the estimated Jaccard
    similarity (the share of equal signature values, which varies by about
    sqrt(J(1 - J) / num_perm)) is at least `threshold`. Rows are read in order and compared with
    the kept rows only: the first row of each cluster is kept, and a row like a dropped one but not
    like any kept one stays; of several kept rows it is like, the most similar (then the first)
    is its duplicate.

    Signatures and bands are datasketch's (MinHash, scheme affine32; MinHashLSH's bands for these
    weights, from its `_optimal_param`), computed in numpy for a batch of rows at once
    (`shingle_hashes`, `minhash_signatures`, `band_groups`): the same values, so the same rows are
    found. Only rows that share a band with another row reach the Python loop. Why: per row,
    datasketch's MinHash object, the Python list of hashes and the LSH calls cost more than the
    arithmetic. On benchmarks/data_throughput.py's rows (~1,100 shingles each; `--compare`,
    interleaved, on a shared, loaded 2-core machine): 20,000 rows 1,007 -> 5,109 rows/s (5.1x),
    100,000 rows 1,171 -> 6,817 rows/s (5.8x; runs while this was written ranged 4.5-5.8x); in
    each, the same rows found, with the same reasons and duplicate_of. The num_perm multiply-adds
    per shingle are now about half the time; one-permutation hashing (Shrivastava 2017) would cut
    them num_perm-fold but is noisier for texts with fewer shingles than num_perm, and 4x did not
    need it.
    """
    import numpy as np
    from datasketch.lsh import _optimal_param

    # Bands weighted toward recall: every candidate is checked, so a false positive costs one
    # comparison, while a missed one keeps a duplicate (equal weights find a pair at exactly the
    # threshold about half the time; these about 93% of the time, at +0.05 over 99%).
    bands, band_size = _optimal_param(threshold, num_perm, 0.05, 0.95)  # 12 x 10 at 0.85, 128
    texts = normalized_texts(ds, fields)
    signatures = np.concatenate(
        [
            minhash_signatures(*shingle_hashes(batch, shingle), num_perm=num_perm, seed=seed)
            for batch in iter(lambda: list(itertools.islice(texts, BATCH_ROWS)), [])
        ]
        or [np.empty((0, num_perm), dtype=np.uint32)]
    )  # (N, num_perm)
    groups, shared = band_groups(signatures, bands=bands, band_size=band_size)
    kept: dict[tuple[int, int], list[int]] = {}  # (band, group) -> its kept rows
    removal = Removal(details={"threshold": threshold, "num_perm": num_perm, "shingle_chars": shingle})
    sharing = np.flatnonzero(shared.any(axis=0))  # the other rows share no band: kept
    for i, row_groups, row_shared in zip(
        sharing.tolist(), groups[:, sharing].T.tolist(), shared[:, sharing].T.tolist(), strict=True
    ):
        keys = [
            (k, group) for k, (group, other) in enumerate(zip(row_groups, row_shared, strict=True)) if other
        ]
        candidates = sorted({j for key in keys for j in kept.get(key, ())})
        similarity = (signatures[candidates] == signatures[i]).mean(axis=1)  # (candidates,)
        best = int(np.argmax(similarity)) if candidates else 0
        if candidates and similarity[best] >= threshold:
            removal.reasons[i] = (
                f"near-duplicate of an earlier row: estimated Jaccard similarity {similarity[best]:.2f} "
                f">= threshold {threshold} ({shingle}-character shingles of the normalised text)"
            )
            removal.duplicate_of[i] = candidates[best]
        else:
            for key in keys:
                kept.setdefault(key, []).append(i)
    return removal


def find_identical_pairs(ds: Dataset, *, format: str, style: str, tokenizer: Any = None) -> Removal:
    """Preference pairs whose chosen and rejected are the same after normalisation, or, for
    conversational rows with a tokenizer, once rendered by its chat template
    (`apply_chat_template(prompt + response, tokenize=False)`, then normalised): a template may
    drop what differs, e.g. reasoning before `</think>`. Standard rows are plain text to TRL, so
    normalisation is their only comparison. (Pairs equal after stripping whitespace are already
    invalid rows, found by validation.)"""
    removal = Removal()
    for i, row in enumerate(iter_rows(ds, text_fields(ds, format))):
        prompt, responses = prompt_and_responses(row, format)
        if normalize(render(responses["chosen"])) == normalize(render(responses["rejected"])):
            removal.reasons[i] = (
                "chosen and rejected are identical after normalisation (NFKC, lowercase, collapsed whitespace)"
            )
        elif tokenizer is not None and style == CONVERSATIONAL:
            chosen, rejected = (
                tokenizer.apply_chat_template(prompt + responses[f], tokenize=False)
                for f in ("chosen", "rejected")
            )
            if normalize(chosen) == normalize(rejected):
                removal.reasons[i] = (
                    "prompt + chosen and prompt + rejected are identical once rendered by the tokenizer's "
                    "chat template"
                )
    return removal


def count_tokens(ds: Dataset, *, format: str, style: str, tokenizer: Any) -> dict[str, list[int]]:
    """Token counts per row: {"prompt": [...], response field: [...]} (see `prompt_and_responses`).

    Standard rows count each field's tokens on its own (no special tokens). Conversational rows
    count the prompt rendered with the generation prompt, and a response as the tokens it adds
    to that: tokens(prompt + response rendered) - tokens(prompt rendered), which can be off by a
    token where the tokenizer merges across the boundary. A conversation with no prompt
    (language modelling) is counted whole.
    """
    counts: dict[str, list[int]] = {}

    def tokens(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def chat(messages: list, *, generation: bool = False) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    rows = iter_rows(ds, text_fields(ds, format))
    while batch := [prompt_and_responses(row, format) for row in itertools.islice(rows, BATCH_ROWS)]:
        prompts = [p for p, _ in batch]
        names = list(batch[0][1])
        has_prompt = prompts[0] is not None
        if style != CONVERSATIONAL:
            if has_prompt:
                counts.setdefault("prompt", []).extend(tokens(prompts))
            for name in names:
                counts.setdefault(name, []).extend(tokens([r[name] for _, r in batch]))
        elif not has_prompt:
            for name in names:
                counts.setdefault(name, []).extend(tokens([chat(r[name]) for _, r in batch]))
        else:
            prompt_tokens = tokens([chat(p, generation=True) for p in prompts])
            counts.setdefault("prompt", []).extend(prompt_tokens)
            for name in names:
                whole = tokens([chat(p + r[name]) for p, r in batch])
                counts.setdefault(name, []).extend(w - n for w, n in zip(whole, prompt_tokens, strict=True))
    return counts


def find_length_violations(
    ds: Dataset,
    *,
    format: str,
    style: str,
    tokenizer: Any,
    min_prompt_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    min_response_tokens: int | None = None,
    max_response_tokens: int | None = None,
) -> Removal:
    """Rows with a prompt or any response (completion; chosen and rejected, each) outside the
    bounds, in tokens of `tokenizer` (see `count_tokens`). The report counts rows per first bound broken."""
    counts = count_tokens(ds, format=format, style=style, tokenizer=tokenizer)
    bounds = {  # prompt or response -> (lowest, highest) token count kept
        "prompt": (min_prompt_tokens, max_prompt_tokens),
        "response": (min_response_tokens, max_response_tokens),
    }
    removal = Removal(details={"by_bound": {}})
    for i in range(len(ds)):
        for name, values in counts.items():
            part = "prompt" if name == "prompt" else "response"
            (low, high), n = bounds[part], values[i]
            if low is not None and n < low:
                bound, why = f"min_{part}_tokens", f"{n} tokens, below min_{part}_tokens {low}"
            elif high is not None and n > high:
                bound, why = f"max_{part}_tokens", f"{n} tokens, above max_{part}_tokens {high}"
            else:
                continue
            removal.reasons[i] = f"{name} has {why}"
            removal.details["by_bound"][bound] = removal.details["by_bound"].get(bound, 0) + 1
            break
    return removal


def category(value: Any) -> str:
    """A column value as a category name (JSON for anything that is not a string)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def find_balance_drops(
    ds: Dataset, *, column: str, strategy: str, max_per_category: int | None, seed: int
) -> Removal:
    """Rows over their category's limit: `cap` keeps at most `max_per_category` rows of each value
    of `column`; `equal` keeps as many of each as the smallest category has (and at most
    `max_per_category`, when given). Which rows stay is a seeded sample; kept rows stay in order."""
    groups: dict[str, list[int]] = {}  # category -> its rows, categories in order of first appearance
    for i, row in enumerate(iter_rows(ds, (column,))):
        groups.setdefault(category(row[column]), []).append(i)
    before = {name: len(rows) for name, rows in groups.items()}
    limit = max_per_category
    if strategy == "equal":
        limit = min(before.values()) if limit is None else min(limit, *before.values())
    rng = random.Random(seed)
    removal = Removal()
    for name, rows in groups.items():
        if len(rows) > limit:
            keep = set(rng.sample(rows, limit))
            why = f"category {name!r} of column {column!r} has {len(rows)} rows; balance ({strategy}) keeps {limit}"
            removal.reasons.update({i: why for i in rows if i not in keep})
    after = {name: min(n, limit) for name, n in before.items()}
    removal.details = {
        "column": column,
        "strategy": strategy,
        "limit": limit,
        "counts_before": before,
        "counts_after": after,
    }
    return removal


def flip_labels(ds: Dataset, *, format: str, fraction: float, seed: int) -> tuple[Dataset, list[int]]:
    """Label noise for robustness experiments: on exactly round(fraction * rows) rows, chosen by a
    seeded sample, swap chosen and rejected (preference) or negate `label` (unpaired preference).
    Returns the new dataset and the flipped rows (sorted indices). Python's round: halves go to even."""
    count = round(fraction * len(ds))
    flipped = sorted(random.Random(seed).sample(range(len(ds)), count))
    if not flipped:
        return ds, []
    targets = set(flipped)

    def swap(batch: dict, indices: list[int]) -> dict:
        for j, i in enumerate(indices):
            if i in targets:
                batch["chosen"][j], batch["rejected"][j] = batch["rejected"][j], batch["chosen"][j]
        return {"chosen": batch["chosen"], "rejected": batch["rejected"]}

    def negate(batch: dict, indices: list[int]) -> dict:
        return {"label": [not v if i in targets else v for i, v in zip(indices, batch["label"], strict=True)]}

    change = swap if format in PAIRED else negate
    flipped_ds = ds.map(
        change, batched=True, with_indices=True, batch_size=BATCH_ROWS, desc=f"flipping {count} labels"
    )
    return flipped_ds, flipped


# --- running the steps ---------------------------------------------------------------------------


def curate(
    ds: Dataset,
    cfg: CurateConfig,
    *,
    format: str,
    style: str,
    seed: int,
    tokenizer: Any = None,
    rejects: Rejects | None = None,
    section: str = "data",
) -> tuple[Dataset, list[dict]]:
    """Run the steps `cfg` turns on, in order, over the train rows `ds`.

    Every dropped row goes to `rejects` as {"step", "key", "reason", "data", ["duplicate_of"]}.
    Returns the curated dataset and the report: one entry per step run,
    {"step", "removed", "rows_after", ...details}. Raises DataError for a step that does not fit
    the data (a missing column, no tokenizer, a format without labels), before any step runs.
    """
    key = f"{section}.curate"
    _check(ds, cfg, format=format, tokenizer=tokenizer, key=key)
    fields = text_fields(ds, format)
    near, length, balance = cfg.near_dedup, cfg.length, cfg.balance
    finders: dict[str, Callable[[Dataset], Removal]] = {
        "dedup": lambda d: find_exact_duplicates(d, fields=fields),
        "near_dedup": lambda d: find_near_duplicates(
            d,
            fields=fields,
            threshold=near.threshold,
            num_perm=near.num_perm,
            shingle=near.shingle,
            seed=seed,
        ),
        "drop_identical_pairs": lambda d: find_identical_pairs(
            d, format=format, style=style, tokenizer=tokenizer
        ),
        "length": lambda d: find_length_violations(
            d, format=format, style=style, tokenizer=tokenizer, **length.model_dump()
        ),
        "balance": lambda d: find_balance_drops(
            d,
            column=balance.column,
            strategy=balance.strategy,
            max_per_category=balance.max_per_category,
            seed=seed,
        ),
    }
    report = []
    for step in cfg.steps():
        if step == "flip":  # always last
            ds, flipped = flip_labels(ds, format=format, fraction=cfg.flip_fraction, seed=seed)
            report.append(
                {
                    "step": "flip",
                    "removed": 0,
                    "rows_after": len(ds),
                    "fraction": cfg.flip_fraction,
                    "flipped": len(flipped),
                    "seed": seed,
                    "flipped_rows": flipped,
                }
            )
            continue
        removal = finders[step](ds)
        ds = drop_rows(
            ds, removal, step=step, rejects=rejects, key=f"{section}.train", config_key=f"{key}.{step}"
        )
        report.append(
            {"step": step, "removed": len(removal.reasons), "rows_after": len(ds), **removal.details}
        )
    return ds, report


def drop_rows(
    ds: Dataset, removal: Removal, *, step: str, rejects: Rejects | None, key: str, config_key: str
) -> Dataset:
    """`ds` without the removed rows, each written to `rejects` first. Raises DataError when rows
    would go without a rejects file to record them, or when no row would be left."""
    if not removal.reasons:
        return ds
    count = len(removal.reasons)
    if rejects is None:
        raise DataError(
            f"{config_key} would remove {count} row{'s' if count != 1 else ''} of {key}, but no rejects file "
            "was given to write them to (rows are never dropped silently; pass rejects_path to load_stage_data)"
        )
    if count == len(ds):
        raise DataError(f"{config_key} would remove all {count} rows of {key}; loosen it or turn it off")
    removed = sorted(removal.reasons)
    originals = sorted(set(removal.duplicate_of.values()))
    columns = ds.column_names
    kept_rows = dict(zip(originals, iter_rows(ds.select(originals), columns), strict=True))
    for i, row in zip(removed, iter_rows(ds.select(removed), columns), strict=True):
        record = {"step": step, "key": key, "reason": removal.reasons[i], "data": row}
        if i in removal.duplicate_of:
            record["duplicate_of"] = kept_rows[removal.duplicate_of[i]]
        rejects.write_record(record)
    gone = set(removed)
    return ds.select([i for i in range(len(ds)) if i not in gone])


def _check(ds: Dataset, cfg: CurateConfig, *, format: str, tokenizer: Any, key: str) -> None:
    """Fail before any work when a configured step cannot apply to this data."""
    if cfg.drop_identical_pairs and format not in PAIRED:
        raise DataError(
            f"{key}.drop_identical_pairs applies to preference data (chosen and rejected); this data is "
            f"{format}; remove it"
        )
    if cfg.flip_fraction > 0 and format not in LABELLED:
        raise DataError(
            f"{key}.flip_fraction flips preference labels (chosen/rejected, or label); this data is {format}, "
            "which has none; remove it"
        )
    if cfg.length is not None:
        if tokenizer is None:
            raise DataError(
                f"{key}.length counts tokens, but no tokenizer was given to load_stage_data (pass tokenizer=; "
                f"in a stage this is an rlft bug), or remove {key}.length"
            )
        prompt_bounds = cfg.length.min_prompt_tokens is not None or cfg.length.max_prompt_tokens is not None
        if format == "language_modeling" and prompt_bounds:
            raise DataError(
                f"{key}.length: language_modeling rows have no prompt; bound the whole text with "
                "min_response_tokens / max_response_tokens"
            )
        if format == "contrastive":
            raise DataError(f"{key}.length: contrastive rows have no prompt or response; remove it")
    if cfg.balance is not None and cfg.balance.column not in ds.column_names:
        raise DataError(
            f"{key}.balance.column: the train rows have no column {cfg.balance.column!r}; "
            f"their columns are {', '.join(ds.column_names)}"
        )
