"""Measure a policy: on a verifiable task (greedy completions scored by a reward function), and by its
distance from a reference (the KL of its own seeded samples).

Greedy decoding (no sampling) makes the task reward reproducible: the same model and prompts always
give the same completions, so a change between stages is the stages' doing, not the dice's. The KL
needs the policy's own distribution, so it samples, with a fixed seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
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

    A model carrying a peft prompt (prompt/prefix tuning) generates through
    `rlft.models.prompt_learning` (peft's own generate is wrong for it under transformers 5),
    which rlft puts on every such model it makes or loads; `fix_prompt_learning` here covers a
    model built by hand.
    """
    import torch

    from rlft.models.prompt_learning import fix_prompt_learning

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [_encode(tokenizer, p) for p in prompts]
    completions: list[str] = [""] * len(encoded)
    was_training, padding_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    fix_prompt_learning(model)
    try:
        with torch.inference_mode():
            for start in range(0, len(encoded), batch_size):
                indices = list(range(start, min(start + batch_size, len(encoded))))
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in indices]}, return_tensors="pt")
                input_ids = batch["input_ids"].to(model.device)  # (B, T)
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


def sampled_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    samples_per_prompt: int,
    temperature: float = 1.0,
    max_new_tokens: int = 32,
    batch_size: int = 64,
    seed: int = 0,
) -> list[list[str]]:
    """`samples_per_prompt` sampled completions per prompt (plain sampling at `temperature`, seeded:
    the same call gives the same text), decoded as `greedy_completions` decodes. (N prompts) -> N lists."""
    flat: list[str] = []
    with _sampling([model], seed):
        for rollout in _rollouts(
            model, tokenizer, prompts, samples_per_prompt, temperature, max_new_tokens, batch_size
        ):
            flat += [_decode(tokenizer, ids) for ids in rollout.responses.tolist()]
    return [flat[i : i + samples_per_prompt] for i in range(0, len(flat), samples_per_prompt)]


@contextlib.contextmanager
def _sampling(models: list[Any], seed: int) -> Iterator[None]:
    """While inside: the models in eval mode (a learned prompt fixed in place), no autograd, torch's RNG
    seeded with `seed` (and restored afterwards, so the caller's random state is left as it was)."""
    import torch

    from rlft.models.prompt_learning import fix_prompt_learning

    states = [(m, m.training) for m in models]
    for model in models:
        model.eval()
        fix_prompt_learning(model)
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        for model, was_training in states:
            model.train(was_training)


def _rollouts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
) -> Iterator[Any]:
    """`model`'s sampled responses (rlft.rl.rollout.Rollout), `samples_per_prompt` per prompt in a row, one
    batch of `batch_size` sequences at a time; used inside `_sampling`."""
    from rlft.rl.rollout import left_pad, sample_responses

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [ids for p in prompts for ids in [_encode(tokenizer, p)] * samples_per_prompt]
    for start in range(0, len(encoded), batch_size):
        prompt_ids, prompt_mask = left_pad(encoded[start : start + batch_size], pad_id)  # (B, P)
        yield sample_responses(
            model,
            prompt_ids.to(model.device),
            prompt_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad_id,
        )


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


def sampled_kl(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    samples_per_prompt: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
) -> Any:
    """KL(policy || reference) in nats per response on `prompts`, from the policy's own samples:
    `samples_per_prompt` responses per prompt sampled at `temperature` (seeded), each response's
    log-prob summed over its tokens under both models, at that temperature (rlft.comparisons.sequence_kl:
    the mean of the log-ratio, with its standard error). Both models read the policy's tokens, so they
    need the same tokenizer.
    """
    from rlft.comparisons import sequence_kl
    from rlft.rl.core import logprobs_from_logits
    from rlft.rl.critic import policy_logits, position_ids_from_mask

    policy_logps: list[float] = []
    reference_logps: list[float] = []
    with _sampling([policy, reference], seed):
        for rollout in _rollouts(
            policy, tokenizer, prompts, samples_per_prompt, temperature, max_new_tokens, batch_size
        ):
            a = rollout.response_mask.shape[1]
            positions = position_ids_from_mask(rollout.attention_mask)
            for model, out in ((policy, policy_logps), (reference, reference_logps)):
                ids, mask = rollout.sequences.to(model.device), rollout.attention_mask.to(model.device)
                logits = policy_logits(model, ids, mask, positions.to(model.device))[
                    :, -a - 1 : -1
                ]  # (B, A, V)
                per_token = logprobs_from_logits(
                    logits, rollout.responses.to(model.device), temperature=temperature
                )
                out += (per_token * rollout.response_mask.to(model.device)).sum(-1).tolist()  # (B,)
    return sequence_kl(policy_logps, reference_logps)
