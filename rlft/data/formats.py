"""Canonical data formats: TRL's dataset formats, detected from column names, and row checks.

| format                | columns                      |
|-----------------------|------------------------------|
| `language_modeling`   | `messages` (conversational) or `text` (standard) |
| `prompt_completion`   | `prompt`, `completion`       |
| `preference`          | `prompt`, `chosen`, `rejected` (explicit prompt); optional `margin` |
| `implicit_preference` | `chosen`, `rejected`, no `prompt` (conversational only); optional `margin` |
| `unpaired_preference` | `prompt`, `completion`, `label` |
| `contrastive`         | `anchor`, `positive`, optional `negative` (strings) |
| `prompt_only`         | `prompt` (TRL's prompt-only: what online methods, PPO/GRPO/RLOO, sample from) |

A dataset is *standard* (the text fields are strings) or *conversational* (they are lists of
`{role, content}` messages), never a mix: TRL applies the chat template to all rows or none.
Columns beyond the format's are kept (reward functions read them).

Implicit prompt: in a conversational `chosen`/`rejected` pair, the messages both begin with are
the prompt (TRL's `extract_prompt`). For plain strings the longest common prefix is not a safe
prompt (two answers may begin with the same words), so standard implicit preference data is
refused: give a `prompt` column. `to_explicit_prompt` and `to_unpaired` (for KTO) convert
datasets between formats, with TRL's own functions.

Detection and row checks are pure Python on plain rows (dicts), so they are cheap to test;
running the checks over a `datasets.Dataset` lives in `rlft.data.validate`. The conversions at
the end take a `datasets.Dataset` and import `trl` when called.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

ROLES = ("system", "user", "assistant", "tool")
STANDARD, CONVERSATIONAL = "standard", "conversational"

# format -> the column sets that make it (a format with two, e.g. language_modeling, uses the
# first one present). Ordered most specific first: detection takes the first accepted match,
# so prompt/completion/label is unpaired preference before it is prompt/completion.
FORMATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "preference": (("prompt", "chosen", "rejected"),),
    "unpaired_preference": (("prompt", "completion", "label"),),
    "prompt_completion": (("prompt", "completion"),),
    "implicit_preference": (("chosen", "rejected"),),
    "language_modeling": (("messages",), ("text",)),
    "contrastive": (("anchor", "positive", "negative"), ("anchor", "positive")),
    "prompt_only": (("prompt",),),  # last: any format with a prompt is also prompt-only data
}
# format -> columns whose presence rules it out: with a prompt column, preference is explicit.
EXCLUDED: dict[str, tuple[str, ...]] = {"implicit_preference": ("prompt",)}
# format -> optional columns, checked when present (they are not part of Detected.fields).
OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "preference": ("margin",),
    "implicit_preference": ("margin",),
}
# What a format needs beyond its columns, for messages.
FORMAT_NOTES: dict[str, str] = {
    "implicit_preference": "no prompt column; conversational, the messages both begin with are the prompt",
    "contrastive": "strings",
}
CANONICAL_FIELDS = ("text", "messages", "prompt", "completion", "chosen", "rejected", "label", "margin")
CANONICAL_FIELDS += ("anchor", "positive", "negative")
# Fields holding text: a string (standard) or a list of messages (conversational).
TEXT_FIELDS = ("text", "messages", "prompt", "completion", "chosen", "rejected")
TEXT_FIELDS += ("anchor", "positive", "negative")


@dataclass(frozen=True)
class Detected:
    """A detected format and the columns it uses, e.g. ("language_modeling", ("messages",))."""

    format: str
    fields: tuple[str, ...]

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in TEXT_FIELDS)


def match_formats(columns: Iterable[str], formats: Iterable[str] = tuple(FORMATS)) -> list[Detected]:
    """Every format among `formats` that `columns` make, most specific first.

    `prompt_only` is the fallback: every format with a prompt makes it too, so it is reported only
    when the columns make no other format among `formats`.
    """
    present, wanted = set(columns), set(formats)
    found = []
    for name, column_sets in FORMATS.items():
        if name not in wanted or present.intersection(EXCLUDED.get(name, ())):
            continue
        for fields in column_sets:
            if present.issuperset(fields):
                found.append(Detected(name, fields))
                break
    if len(found) > 1:
        found = [d for d in found if d.format != "prompt_only"]
    return found


def detect_format(columns: Iterable[str], accepted: Iterable[str]) -> Detected | None:
    """The most specific accepted format that `columns` make, or None."""
    found = match_formats(columns, accepted)
    return found[0] if found else None


def describe_formats(formats: Iterable[str]) -> str:
    """One line per format with the columns it needs, for error messages."""
    return "\n".join(
        f"  {name}: {' or '.join(', '.join(s) for s in FORMATS[name])}"
        + (f" ({FORMAT_NOTES[name]})" if name in FORMAT_NOTES else "")
        for name in formats
    )


def value_style(value: object) -> str | None:
    """STANDARD for a string, CONVERSATIONAL for a list, None for anything else."""
    if isinstance(value, str):
        return STANDARD
    if isinstance(value, list):
        return CONVERSATIONAL
    return None


def detected_style(detected: Detected, column_styles: Mapping[str, str | None]) -> str | None:
    """The dataset's style from its column types; None when a column's type does not decide it.

    language_modeling decides by field (messages / text). Raises ValueError when two text
    columns are typed differently (one strings, the other lists), when implicit preference data
    is plain text (its prompt cannot be told apart) and when contrastive data is conversational.
    """
    if detected.format == "language_modeling":
        return CONVERSATIONAL if detected.fields == ("messages",) else STANDARD
    styles = {f: column_styles.get(f) for f in detected.text_fields}
    known = {s for s in styles.values() if s is not None}
    if len(known) > 1:
        described = ", ".join(
            f"{f!r} holds {'text' if s == STANDARD else 'lists of messages'}" for f, s in styles.items() if s
        )
        raise ValueError(
            f"{described}; all of {', '.join(detected.text_fields)} must be text, or all lists of messages"
        )
    if detected.format == "implicit_preference" and known == {STANDARD}:
        raise ValueError(IMPLICIT_STANDARD)
    if detected.format == "contrastive":
        if known == {CONVERSATIONAL}:
            listed = ", ".join(repr(f) for f, s in styles.items() if s == CONVERSATIONAL)
            raise ValueError(f"{listed} hold lists of messages; contrastive pairs are plain text (strings)")
        return STANDARD
    if len(known) == 1 and None not in styles.values():
        return known.pop()
    return None


IMPLICIT_STANDARD = (
    "'chosen' and 'rejected' are plain text and there is no 'prompt' column: in plain text the prompt "
    "cannot be told apart from the answers safely (their longest common prefix may cut into the answers); "
    "add a 'prompt' column with the prompt and leave only the answers in 'chosen' and 'rejected' "
    "(or map your prompt column with fields.prompt)"
)


# --- row checks -------------------------------------------------------------------------------
# A check returns None for a good value, else the reason, worded to follow "field 'x' ".


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", dict: "an object", list: "a list"}.get(
        type(value), type(value).__name__
    )


def check_text(value: object) -> str | None:
    """A non-empty string (whitespace only counts as empty)."""
    if value is None:
        return "is missing or null"
    if not isinstance(value, str):
        return f"must be a string, got {_type_name(value)}"
    if not value.strip():
        return "is empty"
    return None


def check_messages(value: object, *, needs_assistant: bool) -> str | None:
    """A non-empty list of {role, content} messages; content a string, non-empty for user/assistant."""
    if value is None:
        return "is missing or null"
    if not isinstance(value, list):
        return f"must be a list of {{role, content}} messages, got {_type_name(value)}"
    if not value:
        return "is an empty list of messages"
    for i, message in enumerate(value, 1):
        if not isinstance(message, Mapping):
            return f"message {i} must be an object with 'role' and 'content', got {_type_name(message)}"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            what = "no content" if content is None else f"content of type {_type_name(content)}"
            return f"message {i} ({role}) has {what}; content must be a string"
        if role in ("user", "assistant") and not content.strip():
            return f"message {i} ({role}) has empty content"
    if needs_assistant and not any(m.get("role") == "assistant" for m in value):
        return "has no assistant message"
    return None


def check_styled(value: object, style: str, *, needs_assistant: bool) -> str | None:
    """A text field in the dataset's style: a string when STANDARD, messages when CONVERSATIONAL."""
    if value is None:
        return "is missing or null"
    if style == CONVERSATIONAL:
        if isinstance(value, str):
            return (
                "is a string, but this dataset is conversational: expected a list of {role, content} messages"
            )
        return check_messages(value, needs_assistant=needs_assistant)
    if isinstance(value, list):
        return "is a list of messages, but this dataset holds plain text: expected a string"
    return check_text(value)


def check_label(value: object) -> str | None:
    """An unpaired-preference label: true (desirable) or false (undesirable)."""
    if value is None:
        return "is missing or null"
    if not isinstance(value, bool):
        return f"must be true or false, got {_type_name(value)}"
    return None


Problem = tuple[str, str]  # (canonical field, reason)


def _first_problem(
    row: Mapping, checks: Iterable[tuple[str, Callable[[object], str | None]]]
) -> Problem | None:
    for field, check in checks:
        reason = check(row.get(field))
        if reason:
            return field, reason
    return None


def _language_modeling(row: Mapping, detected: Detected, style: str) -> Problem | None:
    if detected.fields == ("messages",):
        return _first_problem(row, [("messages", lambda v: check_messages(v, needs_assistant=True))])
    return _first_problem(row, [("text", check_text)])


def _prompt_completion(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(
        row,
        [
            ("prompt", lambda v: check_styled(v, style, needs_assistant=False)),
            ("completion", lambda v: check_styled(v, style, needs_assistant=True)),
        ],
    )


def check_margin(value: object) -> str | None:
    """An optional preference margin (how much better chosen is): a finite int or float, not a boolean."""
    if value is None:
        return "is missing or null; give every row a margin, or drop the margin column"
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, str) and _is_number(value):
            return (
                f"is the text {value!r}, not a number (in a CSV file one non-numeric cell makes the whole "
                "column text: fix that cell)"
            )
        got = f"the text {value!r}" if isinstance(value, str) else _type_name(value)
        return f"must be a number, got {got}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    return None


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _same_answer(chosen: object, rejected: object) -> bool:
    """chosen and rejected say the same: equal after stripping (text), or message by message."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        return chosen.strip() == rejected.strip()
    if isinstance(chosen, list) and isinstance(rejected, list):
        return _message_keys(chosen) == _message_keys(rejected)
    return False


def _message_keys(messages: list) -> list[tuple[object, str]]:
    return [(m.get("role"), str(m.get("content", "")).strip()) for m in messages]


def common_prefix(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading items `a` and `b` share, by exact equality. Of chosen and rejected messages:
    an implicit preference's prompt, as TRL's extract_prompt splits it; of token ids: how far a
    prompt's tokens are a prefix of prompt + answer."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


SAME_ANSWER = (
    "is the same as 'chosen' (after stripping whitespace); a preference pair needs two different answers"
)


def _pair_problem(row: Mapping, optional: Iterable[str]) -> Problem | None:
    """Checks shared by the preference formats, after each field passed its own check."""
    if _same_answer(row["chosen"], row["rejected"]):
        return "rejected", SAME_ANSWER
    if "margin" in optional and "margin" in row:
        reason = check_margin(row["margin"])
        if reason:
            return "margin", reason
    return None


def _preference(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(
        row,
        [
            ("prompt", lambda v: check_styled(v, style, needs_assistant=False)),
            ("chosen", lambda v: check_styled(v, style, needs_assistant=True)),
            ("rejected", lambda v: check_styled(v, style, needs_assistant=True)),
        ],
    ) or _pair_problem(row, OPTIONAL_FIELDS["preference"])


def _implicit_preference(row: Mapping, detected: Detected, style: str) -> Problem | None:
    """Conversational chosen/rejected whose shared leading messages are the prompt. Both must go on
    past the shared messages (neither may be a prefix of the other), so TRL's extract_prompt splits
    them exactly there."""
    if style == STANDARD:
        return "chosen", IMPLICIT_STANDARD
    problem = _first_problem(
        row,
        [
            ("chosen", lambda v: check_styled(v, style, needs_assistant=True)),
            ("rejected", lambda v: check_styled(v, style, needs_assistant=True)),
        ],
    )
    if problem:
        return problem
    chosen, rejected = row["chosen"], row["rejected"]
    if _same_answer(chosen, rejected):
        return "rejected", SAME_ANSWER
    shared = common_prefix(chosen, rejected)
    if shared == 0:
        return "chosen", (
            "shares no leading message with 'rejected': with no 'prompt' column, the prompt is the messages "
            "both begin with; start both with the same prompt messages, or add a 'prompt' column"
        )
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(messages):
            return name, (
                f"ends where the shared prompt ends (its {shared} message(s) all open the other answer too), "
                "so it has no answer of its own"
            )
        if not any(m.get("role") == "assistant" for m in messages[shared:]):
            return name, f"has no assistant message after the {shared} shared prompt message(s)"
    return _pair_problem(row, OPTIONAL_FIELDS["implicit_preference"])


def _unpaired_preference(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(
        row,
        [
            ("prompt", lambda v: check_styled(v, style, needs_assistant=False)),
            ("completion", lambda v: check_styled(v, style, needs_assistant=True)),
            ("label", check_label),
        ],
    )


def _contrastive(row: Mapping, detected: Detected, style: str) -> Problem | None:
    problem = _first_problem(row, [(f, check_text) for f in detected.fields])
    if problem:
        return problem
    if "negative" in detected.fields and row["negative"].strip() == row["positive"].strip():
        return "negative", "is the same as 'positive' (after stripping whitespace)"
    return None


def _prompt_only(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(row, [("prompt", lambda v: check_styled(v, style, needs_assistant=False))])


ROW_CHECKS: dict[str, Callable[[Mapping, Detected, str], Problem | None]] = {
    "language_modeling": _language_modeling,
    "prompt_completion": _prompt_completion,
    "preference": _preference,
    "implicit_preference": _implicit_preference,
    "unpaired_preference": _unpaired_preference,
    "contrastive": _contrastive,
    "prompt_only": _prompt_only,
}


def check_row(row: Mapping, detected: Detected, *, style: str) -> Problem | None:
    """The first problem of one row, as (canonical field, reason), or None when it is valid.

    `row` holds the format's fields and those of its OPTIONAL_FIELDS that the dataset has.
    """
    return ROW_CHECKS[detected.format](row, detected, style)


# --- conversions ------------------------------------------------------------------------------
# Dataset -> dataset, with TRL's own functions (imported here: `import rlft.data` stays light).


def to_explicit_prompt(ds: Dataset) -> Dataset:
    """Implicit preference (conversational chosen/rejected) -> preference with a prompt column:
    the messages both begin with become `prompt` (TRL's `maybe_extract_prompt`). A dataset that
    already has a prompt is returned as is. Rows must have passed the implicit_preference checks."""
    from trl.data_utils import maybe_extract_prompt

    if "prompt" in ds.column_names:
        return ds
    if len(ds) and isinstance(ds[0]["chosen"], str):
        raise ValueError(IMPLICIT_STANDARD)
    converted = ds.map(maybe_extract_prompt, desc="extracting the implicit prompt")
    first = ["prompt", "chosen", "rejected"]
    return converted.select_columns(first + [c for c in converted.column_names if c not in first])


def to_unpaired(ds: Dataset) -> Dataset:
    """Preference pairs -> unpaired preference (for KTO): each pair gives two rows, (prompt, chosen,
    label=True) then (prompt, rejected, label=False); extra columns are repeated on both (TRL's
    `unpair_preference_dataset`). An implicit prompt is extracted first. The pair's `margin`, if
    any, is dropped: it describes the pair, not either answer."""
    from trl.data_utils import unpair_preference_dataset

    ds = to_explicit_prompt(ds)
    if "margin" in ds.column_names:
        ds = ds.remove_columns("margin")
    unpaired = unpair_preference_dataset(ds, desc="unpairing preferences")
    first = ["prompt", "completion", "label"]
    return unpaired.select_columns(first + [c for c in unpaired.column_names if c not in first])


# (from format, to format) -> (conversion, what it does, for the report)
CONVERSIONS: dict[tuple[str, str], tuple[Callable[[Dataset], Dataset], str]] = {
    ("implicit_preference", "preference"): (
        to_explicit_prompt,
        "extracted the implicit prompt: the messages chosen and rejected both begin with became 'prompt'",
    ),
    ("preference", "unpaired_preference"): (
        to_unpaired,
        "unpaired the preference pairs: each pair became two rows, chosen with label true and rejected with "
        "label false",
    ),
    ("implicit_preference", "unpaired_preference"): (
        to_unpaired,
        "extracted the implicit prompt, then unpaired the pairs: each pair became two rows, chosen with "
        "label true and rejected with label false",
    ),
}


def convert(ds: Dataset, *, source: str, target: str) -> tuple[Dataset, str | None]:
    """`ds`, in format `source`, converted to format `target`, and what was done (None: nothing).
    Raises ValueError when there is no such conversion."""
    if source == target:
        return ds, None
    if (source, target) not in CONVERSIONS:
        raise ValueError(f"no conversion from {source} to {target}")
    function, note = CONVERSIONS[source, target]
    rows = len(ds)
    converted = function(ds)
    return converted, f"{note} ({rows} -> {len(converted)} rows)"
