"""The rollout half of a PPO step: prompts -> sampled responses -> scores -> an `Experience`.

Huang et al. 2024, sec. 7 (reference code steps 1-6), for a batch of B prompts:

    prompt_ids, prompt_mask = left_pad(encode_prompts(tokenizer, prompts), pad_id)   # (B, P) x 2
    with generation_model(model, accelerator) as unwrapped:                         # gathered once (ZeRO-3)
        rollout = sample_responses(unwrapped.policy, prompt_ids, prompt_mask, ...)  # (B, T), T = P + A
    completions = decode_responses(tokenizer, rollout)                               # text, cut at EOS
    scores = score_responses(reward_fn, prompts, completions, fields)                # (B,)
    exp = experience_from_rollout(model, reference, rollout, scores, ...)           # log-probs, values, GAE

Sampling uses the full distribution at `temperature` (no top-k, no top-p), the distribution the
log-probs are computed under (`rlft.rl.core.logprobs_from_logits`). Responses stop at the
policy's EOS or after `max_new_tokens`; everything after the first EOS is set to the pad id and
masked (`core.response_mask_from_tokens`). The reward is computed on text: responses are decoded
with the policy's tokenizer and handed, with the raw prompts, to a reward with the one signature
`f(prompts, completions, **fields)` (reward_models), so a reward model with another tokenizer
re-encodes them itself.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlft.errors import RewardError
from rlft.rl.core import logprobs_from_logits, response_mask_from_tokens
from rlft.rl.critic import policy_logits, position_ids_from_mask
from rlft.rl.experience import Experience, make_experience

Tensor = torch.Tensor
Prompt = str | list[dict[str, str]]  # raw text, or a conversation (TRL's conversational format)


# --- prompts ----------------------------------------------------------------------------------


class PromptSampler:
    """This process's rows of each global rollout batch, epoch after epoch, in a seeded order.

    Every process draws the same permutation of the N rows (seed + epoch) and takes its own
    slice of each global batch of `batch_size * world_size` rows, so the processes never share
    a prompt within a batch. An epoch's tail shorter than a global batch is skipped (every
    batch is full, as Huang et al.'s `drop_last`). The position is the state: `state_dict()`
    saved with a checkpoint resumes the same sequence of prompts.
    """

    def __init__(
        self, n_rows: int, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        global_batch = batch_size * world_size
        if global_batch > n_rows:
            raise ValueError(
                f"a rollout batch takes {global_batch} prompts ({batch_size} per process x {world_size} processes) "
                f"but the data has only {n_rows}; lower rollout_batch_size or add prompts"
            )
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0  # position: rows of this epoch's permutation already used

    def _order(self) -> list[int]:
        order = list(range(self.n_rows))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        return order

    def next_indices(self) -> list[int]:
        """Row indices of this process's part of the next global batch."""
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > self.n_rows:
            self.epoch, self.position = self.epoch + 1, 0
        rows = self._order()[self.position : self.position + global_batch]
        self.position += global_batch
        return rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], *, max_length: int | None = None
) -> list[list[int]]:
    """Token ids of each prompt, ready for generation; a longer prompt keeps its last `max_length` tokens.

    A conversation is rendered with the chat template and its generation prompt (the template
    adds any BOS itself); a string is tokenized as is (rlft.evaluation encodes the same way).
    """
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids = tokenizer(prompt)["input_ids"]
        else:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length is not None and len(ids) > max_length:
            ids = ids[-max_length:]  # the end of a prompt (its generation prompt) is what must stay
        encoded.append(list(ids))
    return encoded


def left_pad(ids: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token id lists: -> (input_ids (B, P) long, attention_mask (B, P) long)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.long)  # (B, P)
    for row, x in enumerate(ids):
        if x:
            input_ids[row, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            attention_mask[row, width - len(x) :] = 1
    return input_ids, attention_mask


# --- generation -------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Sampled responses in rlft.rl.experience's layout (left-padded prompt, right-padded response)."""

    sequences: Tensor  # (B, T) long: prompt ids then response ids; pad after each response's first EOS
    attention_mask: Tensor  # (B, T) long: real prompt tokens, then response_mask
    response_mask: Tensor  # (B, A) bool: response tokens up to and including the first EOS
    ended_with_eos: Tensor  # (B,) bool: False for responses cut at max_new_tokens

    @property
    def responses(self) -> Tensor:
        return self.sequences[:, -self.response_mask.shape[1] :]  # (B, A)


@contextlib.contextmanager
def generation_model(model: Any, accelerator: Any) -> Iterator[Any]:
    """The unwrapped model to generate with, its weights whole for the duration of a rollout.

    Under DeepSpeed ZeRO-3 every process holds a shard of each weight; generating with the
    sharded module would gather each layer's weights again at every new token. Here they are
    gathered once for the whole rollout, with DeepSpeed's parameter hooks off meanwhile (TRL's
    `unwrap_model_for_generation` does the same for a PreTrainedModel; the actor-critic is not
    one). FSDP: the full parameters are summoned for the rollout. Otherwise the unwrapped module.
    """
    from accelerate.utils import DistributedType

    unwrapped = accelerator.unwrap_model(model)
    if (
        accelerator.distributed_type == DistributedType.DEEPSPEED
        and accelerator.state.deepspeed_plugin.zero_stage == 3
    ):
        import deepspeed
        from trl.models.utils import add_hooks, remove_hooks

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            remove_hooks(model)
            try:
                yield unwrapped
            finally:
                add_hooks(model)
    elif accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False, recurse=True):
            yield unwrapped
    else:
        yield unwrapped


@torch.no_grad()
def sample_responses(
    policy: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_token_id: int | list[int],
    pad_token_id: int,
    synced_gpus: bool = False,
) -> Rollout:
    """Sample one response per prompt: (B, P) x 2 -> Rollout with T = P + A, A <= max_new_tokens.

    Plain sampling at `temperature` over the whole vocabulary (top_k 0, top_p 1): the log-probs
    PPO computes must be those of the distribution the tokens came from. `synced_gpus`: keep
    generating until every process is done (a sharded model's forward is a collective).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling (got {temperature})")
    out = policy.generate(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        synced_gpus=synced_gpus,
    )  # (B, P + A)
    responses = out[:, prompt_ids.shape[1] :]  # (B, A)
    response_mask, ended = response_mask_from_tokens(responses, eos_token_id=eos_token_id)  # (B, A), (B,)
    responses = torch.where(response_mask, responses, pad_token_id)  # anything after the first EOS: pad
    return Rollout(
        sequences=torch.cat([prompt_ids, responses], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
        response_mask=response_mask,
        ended_with_eos=ended,
    )


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Each response as text: its real tokens, EOS and other special tokens dropped, stripped."""
    texts = []
    for ids, keep in zip(rollout.responses.tolist(), rollout.response_mask.tolist(), strict=True):
        real = [i for i, k in zip(ids, keep, strict=True) if k]
        texts.append(tokenizer.decode(real, skip_special_tokens=True).strip())
    return texts


def score_responses(
    reward_fn: Callable[..., list[float]],
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    fields: dict[str, list[Any]] | None = None,
) -> Tensor:
    """One score per response, (B,) float32, from a reward with the one signature.

    The completion is given in the prompt's style, as TRL does: text for a text prompt, an
    assistant message for a conversation. `fields` are the data's other columns (e.g. `answer`),
    one list per column. None becomes NaN: the caller's NaN/Inf guard (rlft/guards.py) decides what a
    non-finite score does, naming the reward function that gave it.
    """
    shaped = [
        c if isinstance(p, str) else [{"role": "assistant", "content": c}]
        for p, c in zip(prompts, completions, strict=True)
    ]
    values = reward_fn(list(prompts), shaped, **(fields or {}))
    scores = torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float32)
    if scores.shape != (len(prompts),):
        raise RewardError(
            f"the reward returned {len(values)} scores for {len(prompts)} responses; a PPO reward must give "
            "one number per response (fix the reward function: return a float for every completion)"
        )
    # a NaN or inf is returned as it is: the stage's non-finite guard names the reward and the step
    return scores


# --- what the models say about a rollout -------------------------------------------------------


@torch.no_grad()
def experience_from_rollout(
    model: Any,
    reference: Any,
    rollout: Rollout,
    scores: Tensor,
    *,
    temperature: float,
    forward_batch_size: int,
    reference_disable_adapter: bool,
    beta: float,
    gamma: float,
    lam: float,
    kl_kind: str,
    whiten_rewards: bool,
    missing_eos_penalty: float | None,
) -> Experience:
    """Log-probs of the policy and the reference, and the critic's values, then KL, rewards, GAE.

    model: the (wrapped) ActorCritic; one forward gives logits and values. reference: a frozen
    causal LM, or (reference_disable_adapter=True) the policy itself, run with its adapters
    switched off (peft's `disable_adapter`): LoRA's reference without a second copy.
    Forwards run `forward_batch_size` rollouts at a time, and compute the logits of the A + 1 last
    positions only (the prompt's are never read). Advantages are always whitened
    (Huang et al. 2024, sec. 7); rewards when `whiten_rewards`.
    """
    a = rollout.response_mask.shape[1]
    responses = rollout.responses  # (B, A)
    logprobs, ref_logprobs, values = [], [], []
    for start in range(0, len(scores), forward_batch_size):
        rows = slice(start, start + forward_batch_size)
        ids, mask = rollout.sequences[rows], rollout.attention_mask[rows]
        logits, value = model(ids, mask, logits_to_keep=a + 1)  # (b, A + 1, V) (or (b, T', V)), (b, T)
        logprobs.append(
            logprobs_from_logits(logits[:, -a - 1 : -1], responses[rows], temperature=temperature)
        )
        values.append(value[:, -a - 1 : -1])
        del logits
        adapters_off = reference.disable_adapter() if reference_disable_adapter else contextlib.nullcontext()
        with adapters_off:
            ref_logits = policy_logits(
                reference, ids, mask, position_ids_from_mask(mask), logits_to_keep=a + 1
            )  # (b, A + 1, V)
        ref_logprobs.append(
            logprobs_from_logits(ref_logits[:, -a - 1 : -1], responses[rows], temperature=temperature)
        )
        del ref_logits
    return make_experience(
        sequences=rollout.sequences,
        attention_mask=rollout.attention_mask,
        response_mask=rollout.response_mask,
        old_logprobs=torch.cat(logprobs),  # (B, A)
        ref_logprobs=torch.cat(ref_logprobs),  # (B, A)
        values=torch.cat(values).float(),  # (B, A)
        scores=scores.to(rollout.sequences.device),
        ended_with_eos=rollout.ended_with_eos,
        beta=beta,
        gamma=gamma,
        lam=lam,
        kl_kind=kl_kind,
        whiten_rewards=whiten_rewards,
        whiten_advantages=True,
        missing_eos_penalty=missing_eos_penalty,
    )
