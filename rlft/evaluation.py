"""Measure a policy on a verifiable task: greedy completions scored by a reward function.

Greedy decoding (no sampling) makes the number reproducible: the same model and prompts always
give the same completions, so a change between stages is the stages' doing, not the dice's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Prompt = str | list[dict[str, str]]  # raw text, or a conversation (TRL's conversational format)


def greedy_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
) -> list[str]:
    """One greedy completion per prompt: the new text only, special tokens removed, stripped.

    A conversational prompt is rendered with the tokenizer's chat template and the generation
    prompt (the template supplies any BOS itself); a string prompt is tokenized as is. Batches are
    left-padded, so every prompt ends where generation starts; the tokenizer's padding side is
    restored afterwards. Generation stops at the tokenizer's eos token.

    A model carrying a peft prompt (prompt/prefix tuning) is decoded by `_greedy_full_forward`,
    not `generate`, on batches of equal-length prompts (no padding). peft 0.21's `generate` for
    prompt learning does not fit transformers 5: it looks for the KV cache under
    `past_key_values` (transformers 5 passes `cache`), so with the cache each step sees the
    prompt and the last token only; without it, prefix tuning gets the wrong positions. And peft
    drops `position_ids` for prompt tuning, so left padding would shift the real tokens against
    the virtual ones. Recomputing the whole sequence at each step is slower, and right.
    """
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_encode(tokenizer, p) for p in prompts]
    completions: list[str] = [""] * len(encoded)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    prompt_learning = _has_prompt(model)
    try:
        with torch.inference_mode():
            for indices in _batches([len(ids) for ids in encoded], batch_size, pad_free=prompt_learning):
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
                input_ids = batch["input_ids"].to(model.device)  # (B, T)
                if prompt_learning:
                    out = _greedy_full_forward(
                        model, input_ids, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id
                    )
                else:
                    out = model.generate(
                        input_ids=input_ids,
                        attention_mask=batch["attention_mask"].to(model.device),
                        do_sample=False,
                        max_new_tokens=max_new_tokens,
                        pad_token_id=pad_id,
                        eos_token_id=tokenizer.eos_token_id,
                    )
                new_tokens = out[:, input_ids.shape[1] :].tolist()  # (B, A)
                for i, ids in zip(indices, new_tokens, strict=True):
                    completions[i] = _decode(tokenizer, ids)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return completions


def task_reward(
    model: Any,
    tokenizer: Any,
    rows: Sequence[dict[str, Any]],
    reward_fn: Callable[..., list[float]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Mean reward of the greedy completions to ``rows``' prompts.

    Each row has a ``prompt``; its other fields (such as ``answer``) go to
    ``reward_fn(prompts, completions, **fields)`` as one list per field, in row order.
    Returns ``{"task_reward": mean in [0, 1], "n": rows, "samples": first 5 as
    {"prompt", "completion", "reward"}}``.
    """
    if not rows:
        raise ValueError("task_reward: no rows to evaluate")
    prompts = [row["prompt"] for row in rows]
    fields = {key: [row.get(key) for row in rows] for key in rows[0] if key != "prompt"}
    completions = greedy_completions(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    rewards = [float(r) for r in reward_fn(prompts, completions, **fields)]
    samples = [
        {"prompt": p, "completion": c, "reward": r}
        for p, c, r in zip(prompts[:5], completions[:5], rewards[:5], strict=True)
    ]
    return {"task_reward": sum(rewards) / len(rewards), "n": len(rows), "samples": samples}


def _greedy_full_forward(model: Any, input_ids: Any, *, max_new_tokens: int, eos_id: int) -> Any:
    """Greedy decoding by whole-sequence forward passes, for unpadded rows: (B, T) -> (B, T + A).

    Rows that reached eos keep getting tokens until every row has (decoding stops at eos anyway).
    """
    import torch

    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (B,)
    for _ in range(max_new_tokens):
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits  # (B, T', V)
        next_ids = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        input_ids = torch.cat([input_ids, next_ids], dim=1)
        done |= next_ids[:, 0] == eos_id
        if bool(done.all()):
            break
    return input_ids


def _batches(lengths: list[int], batch_size: int, *, pad_free: bool) -> list[list[int]]:
    """Indices of each batch: consecutive, or (pad_free) grouped by equal length."""
    if not pad_free:
        return [list(range(s, min(s + batch_size, len(lengths)))) for s in range(0, len(lengths), batch_size)]
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def _has_prompt(model: Any) -> bool:
    """Whether the model is a PeftModel with a prompt-learning adapter (prompt or prefix tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _encode(tokenizer: Any, prompt: Prompt) -> list[int]:
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    """Decode up to the first eos (what follows it is padding)."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
