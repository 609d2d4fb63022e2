"""rlft's shipped tasks: how a prompt and its right answer are written, and their verifiable rewards.

Tasks: the quickstart's ``uppercase_copy`` (`shout: b q x k` -> `B Q X K`) and the multitask
example's ``reverse_copy`` (`reverse: b q x k` -> `k x q b`).

The definition of a task is here, once: rlft.tasks (which writes the task's data files) writes
prompts and answers with these functions, and the reward reads them back with the same ones.

Like every reward function in ``reward_models``: ``f(prompts, completions, **fields) -> list[float]``.
A prompt or completion is either a string or a conversation (a list of ``{"role", "content"}``
messages, TRL's conversational format). Pure Python, no imports from ``rlft``.
"""

from __future__ import annotations

import re
from typing import Any

# --- the quickstart task: copy a list of letters in upper case (`shout: b q x k` -> `B Q X K`) ---

SHOUT = "shout:"


def shout_prompt(letters: list[str]) -> str:
    """The user's request: `shout: b q x k`."""
    return f"{SHOUT} {' '.join(letters)}"


def shout_answer(letters: list[str]) -> str:
    """The one right answer: `B Q X K`."""
    return " ".join(letters).upper()


# The prompt's letters: single lowercase letters, each after spaces, up to the end of the line or a special token.
_SHOUT = re.compile(rf"{re.escape(SHOUT)}((?:[ \t]+[a-z])+)[ \t]*(?=$|<)", re.MULTILINE)


def uppercase_copy(prompts: list[Any], completions: list[Any], **fields: Any) -> list[float]:
    """The quickstart task: ``shout: b q x k`` must be answered exactly ``B Q X K``.

    The user gives a list of lowercase letters after ``shout:``; the answer copies them in upper
    case, in order, separated by single spaces. Reward 1.0 for exactly that (leading and trailing
    whitespace ignored), else 0.0: a lowercase copy, a dropped, swapped or extra letter, doubled
    spaces, an empty answer all score 0.0.

    A conversational prompt is read from its last user message, a conversational completion from
    its last assistant message. A string prompt may be the raw user text or a rendered chat
    template; the last ``shout:`` line in it is used. A prompt without one scores 0.0.
    Extra ``fields`` (such as ``answer``) are accepted and ignored: the prompt holds the answer.
    """
    return _letters_task(prompts, completions, pattern=_SHOUT, answer=shout_answer, name="uppercase_copy")


# --- the multitask example's second task: copy a list of letters in reverse order (`reverse: b q x k` -> `k x q b`) ---

REVERSE = "reverse:"


def reverse_prompt(letters: list[str]) -> str:
    """The user's request: `reverse: b q x k`."""
    return f"{REVERSE} {' '.join(letters)}"


def reverse_answer(letters: list[str]) -> str:
    """The one right answer: `k x q b` (the letters last to first, still lower case)."""
    return " ".join(reversed(letters))


_REVERSE = re.compile(rf"{re.escape(REVERSE)}((?:[ \t]+[a-z])+)[ \t]*(?=$|<)", re.MULTILINE)


def reverse_copy(prompts: list[Any], completions: list[Any], **fields: Any) -> list[float]:
    """The multitask example's second task: ``reverse: b q x k`` must be answered exactly ``k x q b``.

    Reward 1.0 for the letters in reverse order, lower case, separated by single spaces (leading
    and trailing whitespace ignored), else 0.0: a forward copy, an upper-case one, a dropped or
    extra letter all score 0.0. Prompts and completions are read as ``uppercase_copy`` reads them
    (the last ``reverse:`` line of the prompt); a prompt without one scores 0.0.
    """
    return _letters_task(prompts, completions, pattern=_REVERSE, answer=reverse_answer, name="reverse_copy")


def _letters_task(
    prompts: list[Any], completions: list[Any], *, pattern: re.Pattern, answer: Any, name: str
) -> list[float]:
    """1.0 where the completion is exactly `answer(letters)` of the prompt's last `pattern` match, else 0.0."""
    if len(prompts) != len(completions):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(completions)} completions")
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        matches = pattern.findall(_text(prompt, "user"))
        if not matches:
            rewards.append(0.0)
            continue
        expected = answer(matches[-1].split())
        rewards.append(1.0 if _text(completion, "assistant").strip() == expected else 0.0)
    return rewards


def _text(value: Any, role: str) -> str:
    """A string as is; of a conversation, the content of the last message with ``role``."""
    if isinstance(value, str):
        return value
    for message in reversed(value):
        if message.get("role") == role:
            return message.get("content") or ""
    return ""
