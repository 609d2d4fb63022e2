"""Preference data from a model: sample N completions per prompt, score them, pick pairs.

The sampling half (`sample_completions`) runs the model; the rest are pure functions over
(prompt, completions, scores) that `kind: generate` (rlft/stages/generate.py) writes out:

    prompts x num_samples -> batches of `batch_size` sequences -> model.generate (KV cache, seeded per batch)
    -> scores (the stage's `reward:`) -> best_worst_pairs | all_pairs (min_margin) | best_of_n | scored rows

Pairs follow rejection sampling for preference data as in "Statistical Rejection Sampling Improves
Preference Optimization" (Liu et al. 2023) in its simplest form (best vs worst of N); `best_of_n` rows
are the data of rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2, sec. 3.2.3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Prompt = str | list[dict[str, str]]  # raw text, or a conversation (TRL's conversational format)
# Each batch is seeded with seed * BATCH_SEED_STRIDE + its index: the text a batch gets does not depend
# on which batches ran before it (nor, so, on a resumed or split run).
BATCH_SEED_STRIDE = 1_000_003


def sample_completions(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    num_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> list[list[str]]:
    """`num_samples` sampled completions per prompt: (N prompts) -> N lists of `num_samples` texts.

    One process's whole job: `sample_batches` with every batch, regrouped by prompt."""
    batches = sample_batches(
        model,
        tokenizer,
        prompts,
        num_samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )
    flat = [text for index in sorted(batches) for text in batches[index]]
    return [flat[i : i + num_samples] for i in range(0, len(flat), num_samples)]


def sample_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    num_samples: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict[int, list[str]]:
    """This process's batches of samples: {batch index: its texts}.

    Every prompt is repeated `num_samples` times (prompt-major: sequence k is prompt k // num_samples)
    and the sequences run through `model.generate` (KV-cached) in left-padded batches of
    `batch_size`; this process takes the batches whose index % world_size == rank. Each batch is
    seeded on its own (BATCH_SEED_STRIDE), so the same seed and batch_size give the same text, in
    one process or several. A conversational prompt is rendered with the chat template and its
    generation prompt. Text is decoded up to the first EOS, special tokens dropped, stripped.
    """
    import torch
    from tqdm import tqdm

    from rlft.models.prompt_learning import fix_prompt_learning
    from rlft.rl.rollout import encode_prompts, left_pad

    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling (got {temperature})")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [ids for ids in encode_prompts(tokenizer, prompts) for _ in range(num_samples)]
    mine = [i for i in range(0, -(-len(encoded) // batch_size)) if i % world_size == rank]
    out: dict[int, list[str]] = {}
    was_training = model.training
    model.eval()
    fix_prompt_learning(model)
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            for index in tqdm(mine, desc="sampling", unit="batch", disable=not progress):
                torch.manual_seed(seed * BATCH_SEED_STRIDE + index)
                batch = encoded[index * batch_size : (index + 1) * batch_size]
                prompt_ids, prompt_mask = left_pad(batch, pad_id)  # (B, P)
                generated = model.generate(
                    input_ids=prompt_ids.to(model.device),
                    attention_mask=prompt_mask.to(model.device),
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=pad_id,
                    use_cache=True,
                )  # (B, P + A)
                out[index] = [_decode(tokenizer, ids) for ids in generated[:, prompt_ids.shape[1] :].tolist()]
    finally:
        model.train(was_training)
    return out


def _decode(tokenizer: Any, ids: list[int]) -> str:
    """Decode up to the first eos (what follows it is padding)."""
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def as_completion(prompt: Prompt, text: str) -> str | list[dict[str, str]]:
    """A completion in its prompt's style (as TRL does): text for a text prompt, an assistant turn for a conversation."""
    return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]


def score_samples(
    reward_fn: Callable[..., list[float]],
    prompts: Sequence[Prompt],
    samples: Sequence[Sequence[str]],
    fields: dict[str, list[Any]] | None = None,
) -> list[list[float]]:
    """One score per sample, shaped as `samples` (N prompts x K samples); each prompt's fields are
    repeated for its samples (see `score_flat`)."""
    owners = [p for p, group in enumerate(samples) for _ in group]
    scores = score_flat(reward_fn, prompts, [c for group in samples for c in group], owners, fields)
    out, i = [], 0
    for group in samples:
        out.append(scores[i : i + len(group)])
        i += len(group)
    return out


def score_flat(
    reward_fn: Callable[..., list[float]],
    prompts: Sequence[Prompt],
    texts: Sequence[str],
    owners: Sequence[int],
    fields: dict[str, list[Any]] | None = None,
) -> list[float]:
    """One score per text, text i answering prompt `owners[i]`, from a reward with the one signature
    `f(prompts, completions, **fields)`: completions in their prompt's style, fields per prompt."""
    flat_prompts = [prompts[p] for p in owners]
    completions = [as_completion(prompts[p], t) for p, t in zip(owners, texts, strict=True)]
    repeated = {key: [values[p] for p in owners] for key, values in (fields or {}).items()}
    values = list(reward_fn(flat_prompts, completions, **repeated)) if texts else []
    if len(values) != len(completions):
        raise ValueError(f"the reward returned {len(values)} scores for {len(completions)} completions")
    scores = []
    for i, v in enumerate(values):
        score = float("nan") if v is None else float(v)
        if score != score or abs(score) == float("inf"):
            raise ValueError(
                f"the reward gave {v!r} for completion {i}; it must give one finite number per completion"
            )
        scores.append(score)
    return scores


@dataclass(frozen=True)
class Pair:
    """One preference pair from a prompt's samples: indices into them, and their scores."""

    chosen: int
    rejected: int
    score_chosen: float
    score_rejected: float

    @property
    def margin(self) -> float:
        return self.score_chosen - self.score_rejected


@dataclass(frozen=True)
class PairCounts:
    """What pair selection kept and dropped over all prompts (for the data report)."""

    pairs: int
    ties: int  # prompts (best_worst) or candidate pairs (all) with equal scores: no preference
    below_margin: int  # candidates with a positive gap below min_margin


def best_worst_pair(scores: Sequence[float], *, min_margin: float = 0.0) -> Pair | None | str:
    """The best against the worst sample (first index on equal scores); "tie" when they score the
    same, "below_margin" when the gap is under `min_margin`."""
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    worst = min(range(len(scores)), key=lambda i: (scores[i], i))
    gap = scores[best] - scores[worst]
    if gap <= 0:
        return "tie"
    if gap < min_margin:
        return "below_margin"
    return Pair(best, worst, scores[best], scores[worst])


def all_pairs(scores: Sequence[float], *, min_margin: float = 0.0) -> tuple[list[Pair], int, int]:
    """Every pair (i, j), i < j, with a score gap > 0 and >= `min_margin`, the higher one chosen.
    Returns (pairs, ties, below_margin)."""
    pairs, ties, below = [], 0, 0
    for i in range(len(scores)):
        for j in range(i + 1, len(scores)):
            hi, lo = (i, j) if scores[i] >= scores[j] else (j, i)
            gap = scores[hi] - scores[lo]
            if gap <= 0:
                ties += 1
            elif gap < min_margin:
                below += 1
            else:
                pairs.append(Pair(hi, lo, scores[hi], scores[lo]))
    return pairs, ties, below


def select_pairs(
    scores: Sequence[Sequence[float]], *, mode: str, min_margin: float = 0.0
) -> tuple[list[tuple[int, Pair]], PairCounts]:
    """Pairs over all prompts: (prompt index, Pair) in prompt order, and what was dropped.
    mode: best_worst (at most one pair per prompt) or all (every pair whose gap clears min_margin)."""
    selected: list[tuple[int, Pair]] = []
    ties = below = 0
    for p, group in enumerate(scores):
        if mode == "all":
            pairs, t, b = all_pairs(group, min_margin=min_margin)
            selected += [(p, pair) for pair in pairs]
            ties, below = ties + t, below + b
            continue
        pair = best_worst_pair(group, min_margin=min_margin)
        if pair == "tie":
            ties += 1
        elif pair == "below_margin":
            below += 1
        else:
            selected.append((p, pair))
    return selected, PairCounts(len(selected), ties, below)


def best_of_n(scores: Sequence[Sequence[float]]) -> list[int]:
    """The index of each prompt's best sample (the first one on equal scores)."""
    return [max(range(len(group)), key=lambda i: (group[i], -i)) for group in scores]
