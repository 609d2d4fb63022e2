"""One batch of PPO rollouts and everything computed from them, field by field.

Layout (Huang et al. 2024: prompts left-padded for generation, responses right-padded):

    sequences (B, T) = [ pad pad prompt prompt prompt | r0 r1 r2 EOS pad pad ]
                         <------- T - A: prompt ------> <------ A: response ----->
    response_mask (B, A)                              [  1  1  1   1   0   0  ]

The response is always the last A positions: `responses = sequences[:, -A:]`. A causal LM
run over `sequences` predicts response token i from position T - A - 1 + i, so the logits and
the critic's values for the response are `output[:, -A - 1 : -1]` (Huang et al.'s
`[:, context_length - 1 : -1]`). `old_logprobs`, `ref_logprobs` and `values` all use that
alignment: values[:, i] is the critic's estimate at the state *before* response token i.

`make_experience` turns the tensors a rollout produces (sequences, masks, log-probs, values,
scores) into an `Experience` with KL, rewards, advantages and returns, in the order of Huang
et al. 2024, sec. 7 (reference code steps 3-6).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace

import torch

from rlft.rl.core import gae, kl_penalty, masked_whiten, per_token_rewards

Tensor = torch.Tensor

PER_TOKEN = ("old_logprobs", "ref_logprobs", "values", "rewards", "advantages", "returns", "kl")  # (B, A)


@dataclass
class Experience:
    """A batch of B rollouts (prompt + sampled response), what the models said about them at
    rollout time, and the PPO targets computed from that. Everything here is fixed for the
    PPO epochs over this batch; only the current policy's log-probs and values are recomputed.
    """

    # (B, T) long: left-padded prompt ids, then the response ids (right-padded)
    sequences: Tensor
    # (B, T): 1 on real prompt and real response tokens; its last A columns equal response_mask
    attention_mask: Tensor
    # (B, A) bool: 1 up to and including the first EOS, 0 after (core.response_mask_from_tokens)
    response_mask: Tensor
    # (B, A) float: log-prob of each response token under the policy at rollout (temperature applied)
    old_logprobs: Tensor
    # (B, A) float: the same under the frozen reference policy
    ref_logprobs: Tensor
    # (B, A) float: the critic's value at rollout, at the state before each response token
    values: Tensor
    # (B,) float: the reward model's / reward function's score of each response (no EOS penalty)
    scores: Tensor
    # (B, A) float: -beta * kl on every real token, + the (penalised) score on the last; 0 on padding
    rewards: Tensor
    # (B, A) float: GAE advantages (whitened if make_experience was asked to); 0 on padding
    advantages: Tensor
    # (B, A) float: value targets: advantages before whitening + values; 0 on padding
    returns: Tensor
    # (B, A) float: per-token KL estimate (policy || reference) used in the rewards; 0 on padding
    kl: Tensor
    # per-rollout (B, ...) extras for logging: response_length, ended_with_eos, kl, non_score_reward
    info: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_shapes()

    def __len__(self) -> int:
        return self.sequences.shape[0]

    @property
    def responses(self) -> Tensor:
        """The response ids, (B, A): the last A columns of `sequences`."""
        return self.sequences[:, -self.response_mask.shape[1] :]

    def to(self, device: torch.device | str) -> Experience:
        """A copy with every tensor (and every `info` tensor) on `device`."""
        return self._map(lambda t: t.to(device))

    def select(self, index: Tensor | slice) -> Experience:
        """The rollouts at `index` (a slice gives views, an index tensor gives copies of the rows)."""
        if isinstance(index, Tensor):
            index = index.to(self.sequences.device)
        return self._map(lambda t: t[index])

    def minibatches(
        self, size: int, *, generator: torch.Generator | None = None, shuffle: bool = True
    ) -> Iterator[Experience]:
        """Split the batch into B / size minibatches of `size` rollouts, one PPO epoch's worth.

        shuffle=True draws a fresh permutation (from `generator`, a CPU `torch.Generator`, for
        a reproducible and resumable order; the global RNG when None), as the reference code
        reshuffles every epoch; the rows are gathered, so each minibatch holds copies.
        shuffle=False yields the rollouts in order, as views. `size` must divide B: a smaller
        last minibatch would give its rollouts a larger weight (Huang et al.'s `exact_div`).
        """
        n = len(self)
        if size <= 0 or n % size:
            raise ValueError(
                f"minibatch size {size} must be > 0 and divide the {n} rollouts of the batch; "
                "choose a rollout batch size that is a multiple of the minibatch size"
            )
        if not shuffle:
            for start in range(0, n, size):
                yield self.select(slice(start, start + size))
            return
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            yield self.select(order[start : start + size])

    def _map(self, fn) -> Experience:
        tensors = {f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "info"}
        return replace(self, **tensors, info={k: fn(v) for k, v in self.info.items()})

    def _check_shapes(self) -> None:
        if self.sequences.dim() != 2 or self.response_mask.dim() != 2:
            raise ValueError(
                f"Experience.sequences must be (B, T) and response_mask (B, A); got shapes "
                f"{tuple(self.sequences.shape)} and {tuple(self.response_mask.shape)}"
            )
        (b, t), a = self.sequences.shape, self.response_mask.shape[1]
        if a >= t:
            raise ValueError(f"Experience: A = {a} response tokens leave no prompt token in T = {t}")
        expected = {"attention_mask": (b, t), "response_mask": (b, a), "scores": (b,)}
        expected |= {name: (b, a) for name in PER_TOKEN}
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Experience.{name} has shape {got}; expected {shape} (B={b}, T={t}, A={a})")
        for name, value in self.info.items():
            if value.shape[:1] != (b,):
                raise ValueError(
                    f"Experience.info[{name!r}] has shape {tuple(value.shape)}; expected ({b}, ...)"
                )
        if not torch.equal(self.attention_mask[:, -a:].bool(), self.response_mask.bool()):
            raise ValueError(
                "Experience.attention_mask's last A columns differ from response_mask; build the attention "
                "mask from the response mask (an EOS equal to the pad id must stay attended)"
            )


@torch.no_grad()
def make_experience(
    *,
    sequences: Tensor,
    attention_mask: Tensor,
    response_mask: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor,
    values: Tensor,
    scores: Tensor,
    ended_with_eos: Tensor,
    beta: float,
    gamma: float,
    lam: float,
    kl_kind: str,
    whiten_rewards: bool,
    whiten_advantages: bool,
    missing_eos_penalty: float | None = None,
) -> Experience:
    """KL, rewards, advantages and returns for a batch of rollouts, as Huang et al. 2024, sec. 7.

    Shapes: sequences, attention_mask (B, T); response_mask, old_logprobs, ref_logprobs,
    values (B, A); scores, ended_with_eos (B,). The steps of the reference code, in order:
      1. kl = kl_penalty(old_logprobs, ref_logprobs, kind=kl_kind), 0 on padding;
      2. rewards = per_token_rewards(...) (-beta * kl, score on the last real token, the
         missing-EOS penalty when given);
      3. if whiten_rewards: rewards whitened over real tokens without the mean shift;
      4. advantages, returns = gae(rewards, values, ...); returns use the raw advantages;
      5. if whiten_advantages: advantages whitened over real tokens (mean 0, variance 1).
    `info` gets response_length, ended_with_eos, kl (response sum of `kl`, what
    `AdaptiveKLController.update` wants averaged) and non_score_reward (response sum of
    -beta * kl), each (B,).
    """
    keep = response_mask.bool()
    kl = torch.where(keep, kl_penalty(old_logprobs, ref_logprobs, kind=kl_kind), 0.0)  # (B, A)
    rewards = per_token_rewards(
        scores, kl, keep, beta=beta, missing_eos_penalty=missing_eos_penalty, ended_with_eos=ended_with_eos
    )  # (B, A)
    if whiten_rewards:
        rewards = masked_whiten(rewards, keep, shift_mean=False)
    advantages, returns = gae(rewards, values, keep, gamma=gamma, lam=lam)  # (B, A) each
    if whiten_advantages:
        advantages = masked_whiten(advantages, keep)
    info = {
        "response_length": keep.sum(-1),  # (B,)
        "ended_with_eos": ended_with_eos.bool(),  # (B,)
        "kl": kl.sum(-1),  # (B,)
        "non_score_reward": -beta * kl.sum(-1),  # (B,)
    }
    return Experience(
        sequences=sequences,
        attention_mask=attention_mask,
        response_mask=keep,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        scores=scores,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        kl=kl,
        info=info,
    )
