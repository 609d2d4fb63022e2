"""Per-token PPO maths for language models: pure torch functions, no models, no configs.

Shapes use the letters of `rlft.rl` (B rollouts, A response tokens, T full sequence, V vocab).
A *mask* is (B, A), bool or 0/1 of any dtype: 1 marks a real response token (up to and
including the first EOS), 0 the padding after it. Functions never read a tensor's values at
masked positions (they may hold anything, NaN included) and return 0 there unless they say
otherwise.

The order in which a PPO step uses them (Huang et al. 2024, sec. 7; Ziegler et al. 2019, sec. 2.2):

    mask, ended = response_mask_from_tokens(responses, eos_token_id=eos)            # (B, A), (B,)
    logp = logprobs_from_logits(logits, responses, temperature=t)                   # (B, A)
    kl = kl_penalty(logp, ref_logp, kind="k1")                                      # (B, A)
    rewards = per_token_rewards(scores, kl, mask, beta=kl_ctl.value, ...)           # (B, A)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.95)           # (B, A) each
    advantages = masked_whiten(advantages, mask)                                    # (B, A)
    ... then, for each minibatch: policy_loss + vf_coef * value_loss

`rlft.rl.experience.make_experience` does the rollout half of this in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor

# k3 exponentiates the log-ratio: beyond e^10 a single rare token would dominate the batch's
# rewards (OpenRLHF's `compute_approx_kl` clamps the same way). k1, abs and mse are not clamped.
K3_LOG_RATIO_LIMIT = 10.0


# --- tokens and log-probabilities -------------------------------------------------------------


def response_mask_from_tokens(
    responses: Tensor, *, eos_token_id: int | Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Which response tokens are real, and which responses finished: (B, A) -> ((B, A), (B,)).

    A token is real up to and including the first EOS; everything after it is padding, whatever
    its id. Looking for the *first* EOS (rather than for pad ids) keeps the EOS itself in the
    mask even when a tokenizer uses the same id for pad and EOS, the pitfall Huang et al. 2024
    warn about (their pad token is distinct from EOS): a masked EOS is never trained, and the
    policy stops ending its responses. Build the attention mask from this mask, not from
    `ids != pad_token_id`, for the same reason.

    eos_token_id: one id or several (models such as Llama 3 stop on any of a few ids).
    Returns (response_mask (B, A) bool, ended_with_eos (B,) bool). A response without any EOS
    was cut at the length limit: all its A tokens are real, and `ended_with_eos` is False.
    """
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    is_eos = torch.isin(responses, torch.tensor(ids, device=responses.device))  # (B, A)
    eos_before = is_eos.long().cumsum(-1) - is_eos.long()  # (B, A) EOS tokens strictly before i
    return eos_before == 0, is_eos.any(-1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Log-probability of each token under its logits: (B, A, V), (B, A) -> (B, A), float32.

    `logits[:, i]` must be the logits that *predicted* `tokens[:, i]`; for a causal LM run over
    the full (B, T) sequence whose last A positions are the response, that is
    `logits[:, -A - 1 : -1]` (the model's output at position j predicts token j + 1).

    Temperature: the logits are divided by the sampling temperature first, so the log-probs
    are those of the distribution the responses were actually sampled from (Huang et al. 2024,
    sec. 7, and the "scale the logits by sampling temperature" detail of their 2023 blog "The N
    Implementation Details of RLHF with PPO"). Use the same temperature for the policy at
    rollout, the policy in training and the reference, or the importance ratio and the KL
    penalty are biased from the first step.

    Numerics: computed in float32 at least (bf16/fp16 logits are upcast) as
    `logit[token] - logsumexp(logits)`; logsumexp shifts by the row's maximum, so large logits
    neither overflow nor lose the small differences between tokens. Equals
    `log_softmax(logits / temperature).gather(tokens)` without building the (B, A, V) result.
    """
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0 (got {temperature}); greedy decoding has no log-probs to train on"
        )
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, A)
    return picked - torch.logsumexp(logits, dim=-1)  # (B, A)


def entropy_from_logits(logits: Tensor, mask: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Mean entropy of the next-token distributions over real tokens: (B, A, V), (B, A) -> ().

    Per token, H = logsumexp(l) - sum_v softmax(l)_v * l_v, with l = logits / temperature (the
    sampling distribution, as in `logprobs_from_logits`). A diagnostic, as in Huang et al.'s
    reference code: call it under `torch.no_grad()`; it builds one (B, A, V) softmax.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (got {temperature})")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature != 1.0:
        logits = logits / temperature
    probs = torch.softmax(logits, dim=-1)  # (B, A, V)
    per_token = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, A)
    return masked_mean(per_token, mask)


# --- masked statistics ------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor, *, dim: int | None = None) -> Tensor:
    """Mean of `x` over the positions where `mask` is 1: all of them (-> ()), or along `dim`.

    Masked positions are excluded with `torch.where`, so NaN or inf there cannot leak in. A
    row (or a whole mask) without any real position gives 0, not NaN.
    """
    keep = mask.bool()
    total = torch.where(keep, x, 0.0)
    count = keep.to(x.dtype)
    if dim is None:
        return total.sum() / count.sum().clamp(min=1)
    return total.sum(dim) / count.sum(dim).clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, *, unbiased: bool = False) -> Tensor:
    """Variance of `x` over the positions where `mask` is 1: (..), (..) -> ().

    Biased (divides by n) by default, as Huang et al.'s reference `whiten` (`unbiased=False`, to
    match TensorFlow's `tf.nn.moments` in OpenAI's lm-human-preferences). `unbiased=True`
    divides by n - 1 and needs at least two real positions.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.bool().sum()
        if n < 2:
            raise ValueError(f"an unbiased variance needs at least 2 real positions (mask has {int(n)})")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise `x` to mean 0, variance 1 over the real positions; masked positions keep `x`.

    Huang et al. 2024, sec. 7 (reference code `whiten`): advantages are whitened with
    `shift_mean=True` (mean 0, variance 1); rewards, optionally, with `shift_mean=False`, which
    divides by the standard deviation but adds the mean back, so the average reward keeps its
    sign and size relative to the spread. Statistics are over every real token of the given
    tensor, i.e. over the local batch: in a multi-process run each process whitens its own
    rollouts, as the reference code does.

    Departure: the reference code whitens every position (it has no mask); here padding is
    left out of the statistics and returned unchanged, so padding cannot shift the mean.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, x)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens: (B, A) x 3 -> ().

    1 is a perfect critic, 0 one no better than predicting the mean return, below 0 worse than
    that. NaN when the returns do not vary (nothing to explain), as in CleanRL / baselines.
    """
    var_returns = masked_var(returns, mask)
    if var_returns == 0:
        return torch.full_like(var_returns, float("nan"))
    return 1 - masked_var(returns - values, mask) / var_returns


# --- KL penalty and per-token rewards ---------------------------------------------------------


def _kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return logp - ref_logp


def _kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    log_ratio = (ref_logp - logp).clamp(-K3_LOG_RATIO_LIMIT, K3_LOG_RATIO_LIMIT)
    return log_ratio.exp() - 1 - log_ratio


def _kl_abs(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return (logp - ref_logp).abs()


def _kl_mse(logp: Tensor, ref_logp: Tensor) -> Tensor:
    return 0.5 * (logp - ref_logp) ** 2


# name -> per-token estimator of KL(policy || reference) at a token sampled from the policy
KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "k1": _kl_k1,  # log p - log q: unbiased, can be negative per token (Ziegler, Huang et al. use it)
    "k3": _kl_k3,  # (q/p - 1) - log(q/p): unbiased, never negative, lower variance
    "abs": _kl_abs,  # |log p - log q|: biased, never negative
    "mse": _kl_mse,  # 0.5 (log p - log q)^2 ("k2"): biased, never negative, low variance
}


def kl_penalty(logp: Tensor, ref_logp: Tensor, *, kind: str = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) at the sampled tokens: (B, A) x 2 -> (B, A).

    The estimators of Schulman, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html),
    with r = ref / policy probability of the sampled token, log r = ref_logp - logp:
    k1 = -log r = logp - ref_logp; k3 = (r - 1) - log r; plus |log r| ("abs") and
    0.5 (log r)^2 ("mse", Schulman's k2). Summed over a response, k1 is the estimate of the
    sequence KL that Ziegler et al. 2019 (sec. 2.2) and Huang et al. 2024 (sec. 7) put in the
    reward; the default.

    Departure: k3 clamps log r to +-K3_LOG_RATIO_LIMIT (10) before exponentiating.
    Values at masked positions are computed too: mask them (as `per_token_rewards` does).
    """
    if kind not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kind!r}; choose one of {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[kind](logp, ref_logp)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of each row's last real token: (B, A) -> (B,) long. A row without one gives 0."""
    keep = mask.bool().to(torch.uint8)
    return keep.shape[-1] - 1 - keep.flip(-1).argmax(-1)


def per_token_rewards(
    scores: Tensor,
    kl: Tensor,
    response_mask: Tensor,
    *,
    beta: float,
    missing_eos_penalty: float | None = None,
    ended_with_eos: Tensor | None = None,
) -> Tensor:
    """The reward PPO optimises, token by token: (B,), (B, A), (B, A) -> (B, A).

    Ziegler et al. 2019, sec. 2.2: R(x, y) = r(x, y) - beta * KL(policy || reference), with the
    KL penalty given at every token and the reward model's score r added at the last real
    token (the EOS, when the response has one), as in Huang et al. 2024, sec. 7. 0 on padding.

    Missing-EOS penalty (Huang et al. 2024, sec. 7, the "EOS trick"): a response that reached
    the length limit without an EOS is unfinished, and a reward model rarely saw such text in
    training. With `missing_eos_penalty` set, `missing_eos_penalty` is subtracted from the
    score of every response whose `ended_with_eos` (B,) is False.
    Departure: Huang et al. *replace* such a score by a constant (-1); subtracting (TRL's
    `missing_eos_penalty`) keeps the reward model's ordering among unfinished responses and
    works at any reward scale. A large penalty behaves like the replacement.

    beta: the KL coefficient now (a controller's `.value`).
    """
    keep = response_mask.bool()
    if not keep.any(-1).all():
        empty = (~keep.any(-1)).nonzero().flatten().tolist()
        raise ValueError(f"rollouts {empty} have no real response token: nothing to put their score on")
    scores = scores.to(kl.dtype)
    if missing_eos_penalty is not None:
        if ended_with_eos is None:
            raise ValueError(
                "missing_eos_penalty needs ended_with_eos (B,): which responses ended with an EOS"
            )
        if missing_eos_penalty < 0:
            raise ValueError(
                f"missing_eos_penalty is subtracted from scores: give a value >= 0, not {missing_eos_penalty}"
            )
        scores = torch.where(ended_with_eos.bool(), scores, scores - missing_eos_penalty)  # (B,)
    rewards = torch.where(keep, -beta * kl, 0.0)  # (B, A)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_token_index(keep)] += scores
    return rewards


# --- advantages -------------------------------------------------------------------------------


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, response_mask: Tensor, *, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation: (B, A) x 3 -> (advantages (B, A), returns (B, A)).

    Schulman et al. 2016, eq. 16, by a reverse scan over the response (Huang et al. 2024,
    sec. 7, reference code):

        delta_t = r_t + gamma * V(t+1) - V(t)
        A_t     = delta_t + gamma * lam * A(t+1)
        R_t     = A_t + V(t)                      (the value targets)

    The episode ends at the last real token: the value after it is 0 (V(A) = 0, and a terminal
    state's value is 0). Masked positions are skipped: t+1 means the next *real* token, and
    padding gets advantage 0 and return 0. For a mask of real tokens followed by padding (the
    usual response mask) this is exactly the reference loop over rewards and values zeroed on
    padding. Huang et al. use gamma = 1, lam = 0.95.

    Departure from TRL's PPO trainer (not from the paper): TRL places the score and keeps a
    value one position after the EOS; here the score sits on the EOS and the episode ends there.
    Runs under `torch.no_grad()`: advantages and returns are targets, never differentiated.
    """
    keep = response_mask.bool()
    rewards = torch.where(keep, rewards, 0.0)
    values = torch.where(keep, values, 0.0)
    next_value = torch.zeros_like(rewards[:, 0])  # (B,) V at the next real token
    next_advantage = torch.zeros_like(rewards[:, 0])  # (B,) A at the next real token
    reversed_advantages = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        advantage = delta + gamma * lam * next_advantage  # (B,)
        real = keep[:, t]
        reversed_advantages.append(torch.where(real, advantage, 0.0))
        next_advantage = torch.where(real, advantage, next_advantage)
        next_value = torch.where(real, values[:, t], next_value)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)  # (B, A)
    returns = torch.where(keep, advantages + values, 0.0)  # (B, A)
    return advantages, returns


# --- losses -----------------------------------------------------------------------------------


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, *, clip: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate, as a loss to minimise: (B, A) x 4 -> ((), stats).

    Schulman et al. 2017, eq. 7, per token, with ratio = exp(logp - old_logp):
        loss = mean over real tokens of max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip))
    (the negated min of the paper). Averaged over all real tokens of the minibatch, as Huang et
    al. 2024's reference code (`masked_mean`), so long responses weigh more than short ones.

    stats (detached scalars): `clipfrac`, the share of real tokens where the clipped term is
    the larger (active clipping); `approx_kl`, 0.5 * mean (logp - old_logp)^2, the KL between the
    rollout and current policies that Huang et al. log (Schulman's k2).
    The log-ratio is set to 0 on padding before exponentiating, so any log-prob there is safe.
    """
    if clip <= 0:
        raise ValueError(f"clip must be > 0 (got {clip})")
    keep = mask.bool()
    log_ratio = torch.where(keep, logp - old_logp, 0.0)  # (B, A)
    ratio = log_ratio.exp()  # (B, A)
    unclipped = -advantages * ratio  # (B, A)
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)  # (B, A)
    loss = masked_mean(torch.maximum(unclipped, clipped), keep)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(ratio.dtype), keep),
            "approx_kl": 0.5 * masked_mean(log_ratio**2, keep),
        }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, clip: float | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: (B, A) x 4 -> ((), stats).

        clipped = old_values + clip(values - old_values, -clip, clip)
        loss    = 0.5 * mean over real tokens of max((values - R)^2, (clipped - R)^2)

    The pessimistic (max) form of OpenAI baselines' ppo2 and lm-human-preferences, kept by
    Huang et al. 2024 (sec. 7, reference code: `cliprange_value` 0.2). `clip=None` gives the
    plain 0.5 * squared error. stats: `vf_clipfrac`, the share of real tokens where the
    clipped error is the larger.
    """
    keep = mask.bool()
    unclipped_error = (values - returns) ** 2  # (B, A)
    if clip is None:
        loss = 0.5 * masked_mean(unclipped_error, keep)
        return loss, {"vf_clipfrac": torch.zeros((), dtype=loss.dtype, device=loss.device)}
    if clip <= 0:
        raise ValueError(f"clip must be > 0, or None for no value clipping (got {clip})")
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)  # (B, A)
    clipped_error = (clipped_values - returns) ** 2  # (B, A)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), keep)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean((clipped_error > unclipped_error).to(clipped_error.dtype), keep)}
    return loss, stats
