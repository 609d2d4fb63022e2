"""reward_models.tasks.uppercase_copy on crafted cases."""

import subprocess
import sys

import pytest

from reward_models.tasks import reverse_copy, uppercase_copy

PROMPT = "shout: b q x k"


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("B Q X K", 1.0),
        ("  B Q X K\n", 1.0),  # surrounding whitespace is ignored
        ("b q x k", 0.0),  # the SFT flaw: lower case
        ("B q X K", 0.0),
        ("B  Q X K", 0.0),  # doubled space inside
        ("BQXK", 0.0),
        ("B Q X", 0.0),  # dropped letter
        ("B X Q K", 0.0),  # swapped letters
        ("B Q X K K", 0.0),
        ("B Q X Z", 0.0),
        ("", 0.0),
    ],
)
def test_string_prompt_and_completion(completion, reward):
    assert uppercase_copy([PROMPT], [completion]) == [reward]


def test_conversational_uses_last_user_and_last_assistant_message():
    prompt = [
        {"role": "system", "content": "Be loud."},
        {"role": "user", "content": "shout: a a"},
        {"role": "assistant", "content": "A A"},
        {"role": "user", "content": PROMPT},
    ]
    assert uppercase_copy([prompt], [[{"role": "assistant", "content": "B Q X K"}]]) == [1.0]
    assert uppercase_copy([prompt], [[{"role": "assistant", "content": "A A"}]]) == [0.0]
    assert uppercase_copy([prompt], [[]]) == [0.0]  # no assistant message: empty answer


def test_rendered_chat_prompt_and_batches():
    rendered = "<|user|>\nshout: z y x<|end|>\n<|assistant|>\n"
    rewards = uppercase_copy(
        [rendered, PROMPT, "say hi"], ["Z Y X", "b q x k", "HI"], answer=["Z Y X", "B Q X K", "HI"]
    )
    assert rewards == [1.0, 0.0, 0.0]  # a prompt that is not the task scores 0


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        uppercase_copy([PROMPT, PROMPT], ["B Q X K"])


def test_imports_nothing_from_rlft():
    code = "import sys, reward_models.tasks; print(any(m == 'rlft' or m.startswith('rlft.') for m in sys.modules))"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("k x q b", 1.0),
        (" k x q b\n", 1.0),  # surrounding whitespace is ignored
        ("b q x k", 0.0),  # a forward copy
        ("K X Q B", 0.0),  # the other task's case
        ("k x q", 0.0),  # dropped letter
        ("k  x q b", 0.0),
        ("", 0.0),
    ],
)
def test_reverse_copy(completion, reward):
    assert reverse_copy(["reverse: b q x k"], [completion]) == [reward]


def test_reverse_copy_reads_conversations_and_ignores_the_other_task():
    prompt = [{"role": "user", "content": "reverse: a b c"}]
    assert reverse_copy([prompt], [[{"role": "assistant", "content": "c b a"}]]) == [1.0]
    assert reverse_copy(["shout: a b c"], ["c b a"]) == [0.0]  # not this task's prompt
    assert uppercase_copy(["reverse: a b c"], ["A B C"]) == [0.0]
    with pytest.raises(ValueError, match="reverse_copy: 2 prompts but 1 completions"):
        reverse_copy(["reverse: a", "reverse: b"], ["a"])
