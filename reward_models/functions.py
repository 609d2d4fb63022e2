"""Rule-based, verifiable reward functions: exact checks on the completion's text, no model.

Each has the one signature ``f(prompts, completions, **fields) -> list[float]``. Per-sample data
comes from the dataset's fields (``answer``: one value per completion); settings are keyword
parameters, set by ``kwargs`` in YAML (bound with ``functools.partial``)::

    reward: {function: reward_models.functions:regex_match, kwargs: {pattern: "^[A-Z ]+$", full: true}}

A completion is a string or a conversation (its last assistant message is read); leading and
trailing whitespace never counts. Prompts are not read, only counted. Pure Python.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from reward_models.tasks import _text

# A number: optional sign, digits (optionally grouped by thousands with commas), decimals, exponent.
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def exact_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    answer: Sequence[Any] | None = None,
    ignore_case: bool = False,
    normalize_whitespace: bool = False,
    **fields: Any,
) -> list[float]:
    """1.0 when the completion equals the field ``answer``, else 0.0.

    answer: one per completion: a string (numbers are compared as their ``str``), or a list of
        acceptable strings.
    ignore_case: compare case-insensitively (``str.casefold``).
    normalize_whitespace: also treat every run of inner whitespace as one space.
    """
    texts = _completion_texts("exact_match", prompts, completions)
    answers = _field("exact_match", "answer", answer, len(texts))

    def norm(s: Any) -> str:
        s = str(s).strip()
        if normalize_whitespace:
            s = " ".join(s.split())
        return s.casefold() if ignore_case else s

    rewards = []
    for text, expected in zip(texts, answers, strict=True):
        accepted = {norm(a) for a in expected} if isinstance(expected, list | tuple) else {norm(expected)}
        rewards.append(1.0 if norm(text) in accepted else 0.0)
    return rewards


def numeric_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    answer: Sequence[Any] | None = None,
    tolerance: float = 1e-6,
    **fields: Any,
) -> list[float]:
    """1.0 when the last number in the completion is within ``tolerance`` of the field ``answer``.

    Numbers may carry a sign, decimals, an exponent and thousands commas (``1,234.5``); fractions
    and words are not read. A completion without a number scores 0.0.
    answer: one per completion: a number, or a string whose last number is the answer
        (so GSM8K's ``"... #### 72"`` works as is).
    tolerance: largest absolute difference that still counts as equal.
    """
    if tolerance < 0:
        raise ValueError(f"numeric_match: tolerance must be >= 0 (got {tolerance})")
    texts = _completion_texts("numeric_match", prompts, completions)
    answers = _field("numeric_match", "answer", answer, len(texts))
    rewards = []
    for row, (text, expected) in enumerate(zip(texts, answers, strict=True)):
        target = expected if isinstance(expected, int | float) and not isinstance(expected, bool) else None
        if target is None:
            target = last_number(str(expected))
            if target is None:
                raise ValueError(f"numeric_match: answer {expected!r} of row {row} holds no number")
        got = last_number(text)
        rewards.append(1.0 if got is not None and abs(got - target) <= tolerance else 0.0)
    return rewards


def regex_match(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    pattern: str,
    full: bool = False,
    ignore_case: bool = False,
    **fields: Any,
) -> list[float]:
    """1.0 when the completion matches the regular expression ``pattern``, else 0.0.

    pattern: a Python regular expression (``re`` syntax).
    full: the whole completion must match (``re.fullmatch``); else a match anywhere (``re.search``).
    ignore_case: match case-insensitively.
    """
    texts = _completion_texts("regex_match", prompts, completions)
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as e:
        raise ValueError(
            f"regex_match: pattern {pattern!r} is not a valid regular expression ({e})"
        ) from None
    match = regex.fullmatch if full else regex.search
    return [1.0 if match(text.strip()) else 0.0 for text in texts]


def length_penalty(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    target: int,
    scale: float,
    unit: str = "words",
    only_longer: bool = False,
    completion_ids: Sequence[Sequence[int]] | None = None,
    **fields: Any,
) -> list[float]:
    """1.0 at ``target`` length, falling linearly to 0.0 at ``scale`` away from it (never below).

    reward = max(0, 1 - |length - target| / scale).
    target: the preferred length, in ``unit``.
    scale: how far from target (in ``unit``) the reward reaches 0; larger is more lenient.
    unit: ``words`` (whitespace-separated), ``chars``, or ``tokens`` (the policy's tokens, from
        the ``completion_ids`` field that TRL's GRPO/RLOO trainers pass to reward functions).
    only_longer: completions at or under ``target`` get 1.0; only extra length is penalised.
    """
    if scale <= 0:
        raise ValueError(f"length_penalty: scale must be > 0 (got {scale})")
    texts = _completion_texts("length_penalty", prompts, completions)
    if unit == "words":
        lengths = [len(t.split()) for t in texts]
    elif unit == "chars":
        lengths = [len(t.strip()) for t in texts]
    elif unit == "tokens":
        ids = _field("length_penalty", "completion_ids", completion_ids, len(texts))
        lengths = [len(x) for x in ids]
    else:
        raise ValueError(f"length_penalty: unit '{unit}' is not one of words, chars, tokens")
    rewards = []
    for n in lengths:
        excess = max(0, n - target) if only_longer else abs(n - target)
        rewards.append(max(0.0, 1.0 - excess / scale))
    return rewards


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (``"-1,234.5e2"`` style), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    value = float(found[-1].replace(",", ""))
    return value if math.isfinite(value) else None


def _completion_texts(name: str, prompts: Sequence[Any], completions: Sequence[Any]) -> list[str]:
    if len(prompts) != len(completions):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(completions)} completions")
    return [_text(c, "assistant") for c in completions]


def _field(name: str, field: str, values: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if values is None:
        raise ValueError(
            f"{name}: needs the field '{field}' (one value per completion); give the data a '{field}' column"
        )
    if isinstance(values, str) or len(values) != n:
        got = "a string" if isinstance(values, str) else f"{len(values)} values"
        raise ValueError(f"{name}: field '{field}' must hold one value per completion ({n}), got {got}")
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"{name}: row {row} has no '{field}'")
    return values
