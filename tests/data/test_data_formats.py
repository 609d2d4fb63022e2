"""Format detection and row checks (pure Python, no datasets)."""

import pytest

from rlft.data.formats import (
    CONVERSATIONAL,
    STANDARD,
    Detected,
    check_row,
    detect_format,
    detected_style,
    match_formats,
)

SFT = ("language_modeling", "prompt_completion")
PC = Detected("prompt_completion", ("prompt", "completion"))
MESSAGES = Detected("language_modeling", ("messages",))


def msg(role, content):
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["text"], Detected("language_modeling", ("text",))),
        (["messages", "id"], Detected("language_modeling", ("messages",))),
        (["messages", "text"], Detected("language_modeling", ("messages",))),  # TRL prefers messages
        (["prompt", "completion"], PC),
        (["prompt", "completion", "text"], PC),  # the more specific format wins
        (["prompt", "chosen", "rejected"], None),  # preference: not an SFT format
        (["question", "answer"], None),
    ],
)
def test_detect_sft_formats(columns, expected):
    assert detect_format(columns, SFT) == expected


def test_most_specific_format_first():
    found = [m.format for m in match_formats(["prompt", "completion", "label"])]
    assert found == ["unpaired_preference", "prompt_completion"]
    assert (
        detect_format(["prompt", "chosen", "rejected", "completion"], ("preference",)).format == "preference"
    )


def test_style_from_column_types():
    assert detected_style(PC, {"prompt": STANDARD, "completion": STANDARD}) == STANDARD
    assert detected_style(PC, {"prompt": CONVERSATIONAL, "completion": CONVERSATIONAL}) == CONVERSATIONAL
    assert detected_style(PC, {"prompt": STANDARD, "completion": None}) is None  # the rows decide
    assert detected_style(MESSAGES, {}) == CONVERSATIONAL
    with pytest.raises(ValueError, match="'prompt' holds text, 'completion' holds lists of messages"):
        detected_style(PC, {"prompt": STANDARD, "completion": CONVERSATIONAL})


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": "2+2=", "completion": " 4"}, None),
        ({"prompt": "2+2=", "completion": ""}, ("completion", "is empty")),
        ({"prompt": "2+2=", "completion": "  \n"}, ("completion", "is empty")),
        ({"prompt": None, "completion": "4"}, ("prompt", "is missing or null")),
        ({"prompt": "2+2=", "completion": 4}, ("completion", "must be a string, got a number")),
        (
            {"prompt": "2+2=", "completion": [msg("assistant", "4")]},
            ("completion", "is a list of messages, but this dataset holds plain text: expected a string"),
        ),
    ],
)
def test_standard_prompt_completion_rows(row, problem):
    assert check_row(row, PC, style=STANDARD) == problem


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": [msg("user", "hi")], "completion": [msg("assistant", "hello")]}, None),
        (
            {"prompt": [msg("system", ""), msg("user", "hi")], "completion": [msg("assistant", "hello")]},
            None,  # an empty system message is allowed
        ),
        (
            {"prompt": [msg("user", "hi")], "completion": "hello"},
            (
                "completion",
                "is a string, but this dataset is conversational: expected a list of {role, content} messages",
            ),
        ),
        (
            {"prompt": [msg("user", "hi")], "completion": [msg("user", "again")]},
            ("completion", "has no assistant message"),
        ),
        (
            {"prompt": [msg("bot", "hi")], "completion": [msg("assistant", "x")]},
            ("prompt", "message 1 has role 'bot'; expected one of system, user, assistant, tool"),
        ),
        (
            {"prompt": [msg("user", "hi")], "completion": [msg("assistant", None)]},
            ("completion", "message 1 (assistant) has no content; content must be a string"),
        ),
        (
            {"prompt": [msg("user", "hi")], "completion": [msg("assistant", " ")]},
            ("completion", "message 1 (assistant) has empty content"),
        ),
        ({"prompt": [], "completion": [msg("assistant", "x")]}, ("prompt", "is an empty list of messages")),
        (
            {"prompt": ["hi"], "completion": [msg("assistant", "x")]},
            ("prompt", "message 1 must be an object with 'role' and 'content', got str"),
        ),
    ],
)
def test_conversational_prompt_completion_rows(row, problem):
    assert check_row(row, PC, style=CONVERSATIONAL) == problem


def test_language_modeling_rows():
    text = Detected("language_modeling", ("text",))
    assert check_row({"text": "once upon a time"}, text, style=STANDARD) is None
    assert check_row({"text": ""}, text, style=STANDARD) == ("text", "is empty")
    good = {"messages": [msg("user", "hi"), msg("assistant", "hello")]}
    assert check_row(good, MESSAGES, style=CONVERSATIONAL) is None
    only_user = {"messages": [msg("user", "hi")]}
    assert check_row(only_user, MESSAGES, style=CONVERSATIONAL) == ("messages", "has no assistant message")
    assert check_row({"messages": "hi"}, MESSAGES, style=CONVERSATIONAL) == (
        "messages",
        "must be a list of {role, content} messages, got str",
    )


def test_preference_rows():
    pref = Detected("preference", ("prompt", "chosen", "rejected"))
    assert check_row({"prompt": "q", "chosen": "a", "rejected": "b"}, pref, style=STANDARD) is None
    assert check_row({"prompt": "q", "chosen": "a", "rejected": None}, pref, style=STANDARD) == (
        "rejected",
        "is missing or null",
    )
    unpaired = Detected("unpaired_preference", ("prompt", "completion", "label"))
    assert check_row({"prompt": "q", "completion": "a", "label": True}, unpaired, style=STANDARD) is None
    assert check_row({"prompt": "q", "completion": "a", "label": 1}, unpaired, style=STANDARD) == (
        "label",
        "must be true or false, got a number",
    )
