"""Canonical data formats: TRL's dataset formats, detected from column names, and row checks.

| format                | columns                      |
|-----------------------|------------------------------|
| `language_modeling`   | `messages` (conversational) or `text` (standard) |
| `prompt_completion`   | `prompt`, `completion`       |
| `preference`          | `prompt`, `chosen`, `rejected` (explicit prompt) |
| `unpaired_preference` | `prompt`, `completion`, `label` |

A dataset is *standard* (the text fields are strings) or *conversational* (they are lists of
`{role, content}` messages), never a mix: TRL applies the chat template to all rows or none.
Columns beyond the format's are kept (reward functions read them).

Everything here is pure Python on plain rows (dicts), so it is cheap to test; running the
checks over a `datasets.Dataset` lives in `rlft.data.validate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

ROLES = ("system", "user", "assistant", "tool")
STANDARD, CONVERSATIONAL = "standard", "conversational"

# format -> the column sets that make it (a format with two, language_modeling, uses the
# first one present). Ordered most specific first: detection takes the first accepted match,
# so prompt/completion/label is unpaired preference before it is prompt/completion.
FORMATS: dict[str, tuple[tuple[str, ...], ...]] = {
    "preference": (("prompt", "chosen", "rejected"),),
    "unpaired_preference": (("prompt", "completion", "label"),),
    "prompt_completion": (("prompt", "completion"),),
    "language_modeling": (("messages",), ("text",)),
}
CANONICAL_FIELDS = ("text", "messages", "prompt", "completion", "chosen", "rejected", "label")
# Fields holding text: a string (standard) or a list of messages (conversational).
TEXT_FIELDS = ("text", "messages", "prompt", "completion", "chosen", "rejected")


@dataclass(frozen=True)
class Detected:
    """A detected format and the columns it uses, e.g. ("language_modeling", ("messages",))."""

    format: str
    fields: tuple[str, ...]

    @property
    def text_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.fields if f in TEXT_FIELDS)


def match_formats(columns: Iterable[str], formats: Iterable[str] = tuple(FORMATS)) -> list[Detected]:
    """Every format among `formats` that `columns` make, most specific first."""
    present, wanted = set(columns), set(formats)
    found = []
    for name, column_sets in FORMATS.items():
        if name not in wanted:
            continue
        for fields in column_sets:
            if present.issuperset(fields):
                found.append(Detected(name, fields))
                break
    return found


def detect_format(columns: Iterable[str], accepted: Iterable[str]) -> Detected | None:
    """The most specific accepted format that `columns` make, or None."""
    found = match_formats(columns, accepted)
    return found[0] if found else None


def describe_formats(formats: Iterable[str]) -> str:
    """One line per format with the columns it needs, for error messages."""
    return "\n".join(f"  {name}: {' or '.join(', '.join(s) for s in FORMATS[name])}" for name in formats)


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
    columns are typed differently (one strings, the other lists).
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
    if len(known) == 1 and None not in styles.values():
        return known.pop()
    return None


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


def _preference(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(
        row,
        [
            ("prompt", lambda v: check_styled(v, style, needs_assistant=False)),
            ("chosen", lambda v: check_styled(v, style, needs_assistant=True)),
            ("rejected", lambda v: check_styled(v, style, needs_assistant=True)),
        ],
    )


def _unpaired_preference(row: Mapping, detected: Detected, style: str) -> Problem | None:
    return _first_problem(
        row,
        [
            ("prompt", lambda v: check_styled(v, style, needs_assistant=False)),
            ("completion", lambda v: check_styled(v, style, needs_assistant=True)),
            ("label", check_label),
        ],
    )


ROW_CHECKS: dict[str, Callable[[Mapping, Detected, str], Problem | None]] = {
    "language_modeling": _language_modeling,
    "prompt_completion": _prompt_completion,
    "preference": _preference,
    "unpaired_preference": _unpaired_preference,
}


def check_row(row: Mapping, detected: Detected, *, style: str) -> Problem | None:
    """The first problem of one row, as (canonical field, reason), or None when it is valid."""
    return ROW_CHECKS[detected.format](row, detected, style)
