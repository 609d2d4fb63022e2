"""A pairwise LLM judge: a causal LM asked which of two answers to a prompt is better, in both orders.

The judge does not generate. Its verdict is the comparison of its next-token log-probs of the two
labels ("A" and "B" by default) after the question, rendered from a template (as a user turn of its
chat template, when it has one): deterministic, and a 135M model answers as well as it can in one
forward pass. Each pair is asked twice, the answers swapped, to cancel position bias (Zheng et al.
2023, "Judging LLM-as-a-Judge", sec. 3.4: "a conservative approach ... declare a win only if an
answer is preferred in both orders"): when the two verdicts disagree, the pair is a tie
(rlft.comparisons.both_orders).

Letters: N pairs; B a batch of rendered questions, T tokens, V the judge's vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlft.comparisons import both_orders


@dataclass(frozen=True)
class JudgedPairs:
    """What the judge said about N pairs (a, b).

    `first[i]`: the position it picked (0 or 1) with a shown first; `second[i]`: the position it
    picked with b shown first; `outcomes[i]`: 1 a wins, 0 b wins, 0.5 a tie (the orders disagree);
    `margins_*[i]`: log p(label of position 0) - log p(label of position 1), per order.
    """

    first: list[int]
    second: list[int]
    outcomes: np.ndarray  # (N,)
    margins_first: list[float]
    margins_second: list[float]


def label_token_ids(tokenizer: Any, labels: Sequence[str]) -> list[int]:
    """The first token of each label, as the judge would write it first; the labels must differ in it."""
    ids = []
    for label in labels:
        tokens = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not tokens:
            raise ValueError(f"judge label {label!r} encodes to no token")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"judge labels {list(labels)} start with the same token in the judge's tokenizer; "
            "choose labels that differ in their first character, e.g. [A, B] or ['1', '2']"
        )
    return ids


def render(
    tokenizer: Any, template: str, *, prompt: str, first: str, second: str, chat_template: bool = True
) -> list[int]:
    """The judge's input ids for one question: `template` filled in, sent as a user turn through the
    tokenizer's chat template (with the generation prompt) when `chat_template` and it has one."""
    text = template.format(prompt=prompt, first=first, second=second)
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def prompt_text(prompt: str | list[dict[str, str]]) -> str:
    """A conversation as the judge reads it: one `role: content` line per message; a string as is."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in prompt)


def label_margins(
    model: Any,
    tokenizer: Any,
    questions: Sequence[list[int]],
    label_ids: Sequence[int],
    *,
    batch_size: int = 8,
) -> list[float]:
    """For each question: log p(label 0) - log p(label 1) at the judge's next token. (N,)"""
    import torch

    from rlft.rl.critic import policy_logits, position_ids_from_mask
    from rlft.rl.rollout import left_pad

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    margins: list[float] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(questions), batch_size):
                ids, mask = left_pad(questions[start : start + batch_size], pad_id)  # (B, T)
                ids, mask = ids.to(model.device), mask.to(model.device)
                logits = policy_logits(model, ids, mask, position_ids_from_mask(mask))[:, -1]  # (B, V)
                logps = torch.log_softmax(logits.float(), dim=-1)[:, list(label_ids)]  # (B, 2)
                margins += (logps[:, 0] - logps[:, 1]).tolist()
    finally:
        model.train(was_training)
    return margins


def judge_pairs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    a: Sequence[str],
    b: Sequence[str],
    *,
    template: str,
    labels: Sequence[str] = ("A", "B"),
    chat_template: bool = True,
    batch_size: int = 8,
) -> JudgedPairs:
    """Ask the judge about every pair (a[i], b[i]) in both orders; a tie where the orders disagree.

    A verdict picks position 0 when its label's log-prob is strictly higher, so a judge that cannot
    tell the labels apart (equal log-probs) picks position 1 in both orders: a tie, never a win.
    """
    if not (len(prompts) == len(a) == len(b)):
        raise ValueError("judge_pairs: one prompt and two answers per pair")
    label_ids = label_token_ids(tokenizer, labels)
    texts = [prompt_text(p) for p in prompts]

    def ask(shown_first: Sequence[str], shown_second: Sequence[str]) -> list[float]:
        questions = [
            render(tokenizer, template, prompt=p, first=x, second=y, chat_template=chat_template)
            for p, x, y in zip(texts, shown_first, shown_second, strict=True)
        ]
        return label_margins(model, tokenizer, questions, label_ids, batch_size=batch_size)

    margins_first, margins_second = ask(a, b), ask(b, a)
    first = [0 if m > 0 else 1 for m in margins_first]
    second = [0 if m > 0 else 1 for m in margins_second]
    return JudgedPairs(first, second, both_orders(first, second), margins_first, margins_second)
