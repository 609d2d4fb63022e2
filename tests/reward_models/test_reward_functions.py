"""reward_models.functions on crafted cases: exact, numeric, regex and length rewards."""

import pytest

from reward_models.functions import exact_match, last_number, length_penalty, numeric_match, regex_match


def chat(text):
    return [{"role": "assistant", "content": text}]


def run(fn, completions, **kwargs):
    return fn(["p"] * len(completions), completions, **kwargs)


def test_exact_match_strips_and_respects_options():
    completions = ["Paris", " Paris\n", "paris", "New  York", "Berlin"]
    answers = ["Paris", "Paris", "Paris", "New York", "Paris"]
    assert run(exact_match, completions, answer=answers) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert run(exact_match, completions, answer=answers, ignore_case=True) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert run(exact_match, completions, answer=answers, normalize_whitespace=True) == [
        1.0,
        1.0,
        0.0,
        1.0,
        0.0,
    ]


def test_exact_match_lists_of_answers_numbers_and_conversations():
    assert run(exact_match, ["colour", "color", "colr"], answer=[["color", "colour"]] * 3) == [1.0, 1.0, 0.0]
    assert run(exact_match, ["42", "42.0"], answer=[42, 42]) == [1.0, 0.0]
    assert run(exact_match, [chat("A B"), [], chat("a b")], answer=["A B", "", "A B"]) == [1.0, 1.0, 0.0]


def test_exact_match_needs_the_answer_field():
    with pytest.raises(ValueError, match="needs the field 'answer'"):
        run(exact_match, ["x"])
    with pytest.raises(ValueError, match="one value per completion \\(2\\), got 1 values"):
        run(exact_match, ["x", "y"], answer=["x"])
    with pytest.raises(ValueError, match="row 1 has no 'answer'"):
        run(exact_match, ["x", "y"], answer=["x", None])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        exact_match(["a", "b"], ["x"], answer=["x"])


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("The answer is 72.", 72.0),
        ("3 apples, then 4, so 7", 7.0),
        ("-3.5", -3.5),
        ("total: 1,234.5 dollars", 1234.5),
        ("1e3", 1000.0),
        ("about .5", 0.5),
        ("x = +2", 2.0),
        ("no number here", None),
        ("", None),
    ],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_numeric_match_tolerance_and_answer_forms():
    completions = ["so it is 72", "72.0000001", "71.9", "seventy-two", chat("It is 72")]
    assert run(numeric_match, completions, answer=[72] * 5) == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert run(numeric_match, completions, answer=["#### 72"] * 5, tolerance=0.1) == [1.0, 1.0, 1.0, 0.0, 1.0]
    assert run(numeric_match, ["0.30000000000000004"], answer=[0.3]) == [1.0]
    with pytest.raises(ValueError, match="holds no number"):
        run(numeric_match, ["1"], answer=["none"])
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        run(numeric_match, ["1"], answer=[1], tolerance=-1)


def test_regex_match_search_full_and_case():
    completions = ["<answer>B Q</answer>", "text <answer>x</answer> more", "<ANSWER>y</ANSWER>", "nothing"]
    pattern = r"<answer>.+</answer>"
    assert run(regex_match, completions, pattern=pattern) == [1.0, 1.0, 0.0, 0.0]
    assert run(regex_match, completions, pattern=pattern, full=True) == [1.0, 0.0, 0.0, 0.0]
    assert run(regex_match, completions, pattern=pattern, full=True, ignore_case=True) == [1.0, 0.0, 1.0, 0.0]
    assert run(regex_match, ["  A B \n", chat("A B")], pattern="[A-Z ]+", full=True) == [1.0, 1.0]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        run(regex_match, ["x"], pattern="(")


def test_length_penalty_is_linear_around_the_target():
    completions = ["one two three", "one", "one two three four five", "a b c d e f g h i"]  # 3, 1, 5, 9 words
    assert run(length_penalty, completions, target=3, scale=4) == [1.0, 0.5, 0.5, 0.0]
    assert run(length_penalty, completions, target=3, scale=4, only_longer=True) == [1.0, 1.0, 0.5, 0.0]
    assert run(length_penalty, [" abcd "], target=2, scale=4, unit="chars") == [0.5]
    assert run(
        length_penalty, ["x", "y"], target=4, scale=2, unit="tokens", completion_ids=[[1, 2, 3], [1]]
    ) == [
        0.5,
        0.0,
    ]
    assert run(length_penalty, [chat("a b")], target=2, scale=1) == [1.0]


def test_length_penalty_errors():
    with pytest.raises(ValueError, match="needs the field 'completion_ids'"):
        run(length_penalty, ["x"], target=1, scale=1, unit="tokens")
    with pytest.raises(ValueError, match="unit 'lines' is not one of"):
        run(length_penalty, ["x"], target=1, scale=1, unit="lines")
    with pytest.raises(ValueError, match="scale must be > 0"):
        run(length_penalty, ["x"], target=1, scale=0)
