"""Preference with an implicit prompt, margins, contrastive pairs, and the conversions between formats."""

import json
import math

import pytest

from rlft.data import DataConfig, load_stage_data
from rlft.data.formats import (
    CONVERSATIONAL,
    STANDARD,
    Detected,
    check_margin,
    check_row,
    convert,
    detect_format,
    detected_style,
    match_formats,
    to_explicit_prompt,
    to_unpaired,
)

IMPLICIT = Detected("implicit_preference", ("chosen", "rejected"))
PAIRS = Detected("contrastive", ("anchor", "positive", "negative"))


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / ".hf_datasets_cache"))


def msg(role, content):
    return {"role": role, "content": content}


def conversation(question, answer):
    return [msg("user", question), msg("assistant", answer)]


# --- detection ------------------------------------------------------------------------------------


def test_detection_of_the_new_formats():
    assert detect_format(["chosen", "rejected"], ["preference", "implicit_preference"]) == IMPLICIT
    # with a prompt column the prompt is explicit: implicit_preference does not match at all
    assert [m.format for m in match_formats(["prompt", "chosen", "rejected"])] == ["preference"]
    assert detect_format(["anchor", "positive", "negative", "id"], ["contrastive"]) == PAIRS
    assert detect_format(["anchor", "positive"], ["contrastive"]).fields == ("anchor", "positive")


def test_style_rules_of_the_new_formats():
    with pytest.raises(
        ValueError, match=r"'chosen' and 'rejected' are plain text and there is no 'prompt' column"
    ):
        detected_style(IMPLICIT, {"chosen": STANDARD, "rejected": STANDARD})
    assert detected_style(IMPLICIT, {"chosen": CONVERSATIONAL, "rejected": CONVERSATIONAL}) == CONVERSATIONAL
    assert detected_style(PAIRS, {"anchor": STANDARD, "positive": STANDARD, "negative": None}) == STANDARD
    with pytest.raises(ValueError, match=r"contrastive pairs are plain text"):
        detected_style(
            PAIRS, {"anchor": CONVERSATIONAL, "positive": CONVERSATIONAL, "negative": CONVERSATIONAL}
        )


# --- row checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"chosen": conversation("q", "A"), "rejected": conversation("q", "b")}, None),
        (
            {"chosen": conversation("q", "A"), "rejected": conversation("other q", "b")},
            ("chosen", "shares no leading message with 'rejected'"),
        ),
        (
            {"chosen": conversation("q", "A"), "rejected": conversation("q", "A ")},
            ("rejected", "is the same as 'chosen'"),
        ),
        (
            {
                "chosen": conversation("q", "A"),
                "rejected": [*conversation("q", "A"), *conversation("more", "x")],
            },
            ("chosen", "ends where the shared prompt ends"),
        ),
        (
            {
                "chosen": [*conversation("q", "A"), msg("user", "x")],
                "rejected": [*conversation("q", "A"), msg("user", "y")],
            },
            ("chosen", "has no assistant message after the 2 shared prompt message(s)"),
        ),
        ({"chosen": "q A", "rejected": "q b"}, ("chosen", "'chosen' and 'rejected' are plain text")),
    ],
)
def test_implicit_preference_rows(row, problem):
    style = CONVERSATIONAL if isinstance(row["chosen"], list) else STANDARD
    found = check_row(row, IMPLICIT, style=style)
    if problem is None:
        assert found is None
    else:
        assert found[0] == problem[0] and problem[1] in found[1]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (0.5, None),
        (-2, None),
        (True, "must be a number, got a boolean"),
        ("big", "must be a number, got the text 'big'"),
        ("0.5", "is the text '0.5', not a number"),
        (math.inf, "must be a finite number, got inf"),
        (math.nan, "must be a finite number, got nan"),
        (None, "is missing or null"),
    ],
)
def test_margin(value, reason):
    found = check_margin(value)
    assert found is None if reason is None else found.startswith(reason)


def test_margin_is_checked_only_when_present():
    pref = Detected("preference", ("prompt", "chosen", "rejected"))
    row = {"prompt": "q", "chosen": "a", "rejected": "b"}
    assert check_row(row, pref, style=STANDARD) is None
    assert check_row({**row, "margin": "x"}, pref, style=STANDARD)[0] == "margin"


def test_contrastive_rows():
    assert check_row({"anchor": "a", "positive": "b", "negative": "c"}, PAIRS, style=STANDARD) is None
    assert check_row({"anchor": "a", "positive": "b", "negative": " b"}, PAIRS, style=STANDARD) == (
        "negative",
        "is the same as 'positive' (after stripping whitespace)",
    )
    assert check_row({"anchor": "a", "positive": 3, "negative": "c"}, PAIRS, style=STANDARD) == (
        "positive",
        "must be a string, got a number",
    )


# --- conversions ----------------------------------------------------------------------------------


def implicit_dataset():
    from datasets import Dataset

    system = [msg("system", "be loud")]
    return Dataset.from_list(
        [
            {
                "chosen": system + conversation("shout: a b", "A B"),
                "rejected": system + conversation("shout: a b", "a b"),
                "id": 1,
            },
            {"chosen": conversation("shout: c", "C"), "rejected": conversation("shout: c", "c"), "id": 2},
        ]
    )


def test_to_explicit_prompt_uses_the_shared_messages():
    ds = to_explicit_prompt(implicit_dataset())
    assert ds.column_names == ["prompt", "chosen", "rejected", "id"]
    assert ds[0]["prompt"] == [msg("system", "be loud"), msg("user", "shout: a b")]
    assert ds[0]["chosen"] == [msg("assistant", "A B")]
    assert ds[1]["rejected"] == [msg("assistant", "c")]
    assert to_explicit_prompt(ds) is ds  # already explicit


def test_to_explicit_prompt_refuses_plain_text():
    from datasets import Dataset

    with pytest.raises(ValueError, match="add a 'prompt' column"):
        to_explicit_prompt(Dataset.from_list([{"chosen": "q a", "rejected": "q b"}]))


def test_to_unpaired_gives_two_labelled_rows_per_pair():
    from datasets import Dataset

    pairs = Dataset.from_list(
        [
            {"prompt": "2+2=", "chosen": "four", "rejected": "five", "margin": 1.0, "id": 1},
            {"prompt": "3+3=", "chosen": "six", "rejected": "nine", "margin": 2.0, "id": 2},
        ]
    )
    ds = to_unpaired(pairs)
    assert ds.column_names == ["prompt", "completion", "label", "id"]  # the pair's margin is dropped
    assert ds.to_list() == [
        {"prompt": "2+2=", "completion": "four", "label": True, "id": 1},
        {"prompt": "3+3=", "completion": "six", "label": True, "id": 2},
        {"prompt": "2+2=", "completion": "five", "label": False, "id": 1},
        {"prompt": "3+3=", "completion": "nine", "label": False, "id": 2},
    ]
    unpaired_implicit = to_unpaired(implicit_dataset())
    assert len(unpaired_implicit) == 4
    assert unpaired_implicit[3]["prompt"] == [msg("user", "shout: c")]


def test_convert_says_what_it_did():
    ds, note = convert(implicit_dataset(), source="implicit_preference", target="preference")
    assert "prompt" in ds.column_names
    assert note.startswith("extracted the implicit prompt") and note.endswith("(2 -> 2 rows)")
    same, nothing = convert(ds, source="preference", target="preference")
    assert (same, nothing) == (ds, None)
    _, note = convert(ds, source="preference", target="unpaired_preference")
    assert note.startswith("unpaired the preference pairs") and note.endswith("(2 -> 4 rows)")
    with pytest.raises(ValueError, match="no conversion from contrastive to preference"):
        convert(ds, source="contrastive", target="preference")


# --- through load_stage_data ----------------------------------------------------------------------


def test_loads_implicit_preference_and_contrastive_files(tmp_path):
    rows = [{"chosen": conversation("q", "A"), "rejected": conversation("q", "b"), "margin": 0.5}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_stage_data(
        DataConfig(train="p.jsonl"), formats=("preference", "implicit_preference"), base_dir=tmp_path
    )
    assert (data.format, data.report["style"], data.report["extra_columns"]) == (
        "implicit_preference",
        "conversational",
        ["margin"],
    )
    (tmp_path / "pairs.csv").write_text("query,positive,negative\nwhat is 42,42,null\n")
    data = load_stage_data(
        DataConfig(train="pairs.csv", fields={"anchor": "query"}), formats=("contrastive",), base_dir=tmp_path
    )
    assert data.format == "contrastive"
    assert data.train[0] == {"anchor": "what is 42", "positive": "42", "negative": "null"}  # text stays text
