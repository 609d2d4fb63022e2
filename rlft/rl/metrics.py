"""What a PPO step reports: the `ppo/*` metrics of Huang et al. 2024's reference code, averaged over
processes, and the rows of the sample-generations table.

    ppo/score               mean score of the responses (the reward model / function, before any penalty)
    ppo/kl                  mean response KL from the reference (per-token estimates summed over a response)
    ppo/non_score_reward    mean of -beta * that KL;  ppo/reward: score + non_score_reward
    ppo/response_length     mean real response tokens (EOS included);  ppo/eos_fraction: responses that ended
    ppo/explained_variance  of the returns by the critic's values at rollout (rlft.rl.core)
    ppo/value               mean critic value at rollout
    ppo/policy_loss, ppo/value_loss, ppo/loss, ppo/entropy, ppo/clipfrac, ppo/approx_kl, ppo/vf_clipfrac
                            means over the update's micro-batches (rlft.rl.update)
    rewards/<part>          mean unweighted score of each part of a weighted-sum reward

The stage adds perf/seconds_per_step, perf/tokens_per_second and, from rlft.rl.perf.step_perf, the
step's FLOPs and model-FLOPs utilisation, whole and by phase (sample, score, forward, train).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rlft.rl.core import explained_variance, masked_mean
from rlft.rl.experience import Experience


def step_metrics(
    experience: Experience, update: dict[str, float], *, reward_fn: Any = None
) -> dict[str, Any]:
    """This process's metrics of one step, as 0-d tensors (average them with `mean_over_processes`)."""
    info = experience.info
    metrics = {
        "ppo/score": experience.scores.mean(),
        "ppo/kl": info["kl"].mean(),
        "ppo/non_score_reward": info["non_score_reward"].mean(),
        "ppo/reward": (experience.scores + info["non_score_reward"]).mean(),
        "ppo/response_length": info["response_length"].float().mean(),
        "ppo/eos_fraction": info["ended_with_eos"].float().mean(),
        "ppo/explained_variance": explained_variance(
            experience.values, experience.returns, experience.response_mask
        ),
        "ppo/value": masked_mean(experience.values, experience.response_mask),
        **{f"ppo/{name}": torch.tensor(value) for name, value in update.items()},
    }
    parts = getattr(reward_fn, "last_components", {})  # a reward_models.CompositeReward's last call
    if len(parts) > 1:
        metrics |= {f"rewards/{name}": torch.tensor(scores).float().mean() for name, scores in parts.items()}
    return metrics


def mean_over_processes(accelerator: Any, values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each scalar averaged over the processes (each holds the same number of rollouts). A collective:
    every process must call it."""
    names = sorted(values)
    stacked = torch.stack([values[n].detach().float().reshape(()).to(accelerator.device) for n in names])
    mean = accelerator.reduce(stacked, reduction="mean") if accelerator.num_processes > 1 else stacked
    return dict(zip(names, mean.cpu().tolist(), strict=True))


def sample_rows(prompts: list[Any], completions: list[str], scores: torch.Tensor, *, n: int) -> list[dict]:
    """The first n rollouts as table rows: prompt (a conversation's last user message), completion, score."""
    rows = []
    for prompt, completion, score in zip(prompts[:n], completions[:n], scores[:n].tolist(), strict=True):
        if not isinstance(prompt, str):
            prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), str(prompt))
        rows.append({"prompt": prompt, "completion": completion, "score": score})
    return rows


def weights_checksum(module: torch.nn.Module) -> float:
    """Sum of a module's weights, whole (gathered under ZeRO-3): equal on every process of one run."""
    params = list(module.parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 shards
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params)
    with torch.no_grad(), gather:
        return sum(p.detach().float().sum().item() for p in params)
