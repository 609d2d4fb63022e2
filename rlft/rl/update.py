"""The learning half of a PPO step: epochs of clipped-loss minibatch updates over one `Experience`.

Huang et al. 2024, sec. 7 (reference code, the `ppo_epochs` loop), after Schulman et al. 2017:

    for epoch in range(ppo_epochs):                       # 4 in Huang et al.
        for minibatch in experience.minibatches(size):    # a fresh shuffle every epoch
            for micro in minibatch split into gradient_accumulation_steps parts:
                logits, values = actor_critic(micro)      # the current policy and critic
                loss = policy_loss + vf_coef * value_loss - entropy_coef * entropy
                backward                                  # accumulated
            clip the gradient norm, one optimizer step

Each micro-batch's losses are means over its own real tokens (the reference code's
`masked_mean` per micro-batch), so accumulating k micro-batches of size m equals one batch of
k*m only when all responses are equally long.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from rlft.rl.core import entropy_from_logits, logprobs_from_logits, policy_loss, value_loss
from rlft.rl.experience import Experience


def ppo_update(
    model: Any,
    optimizer: Any,
    experience: Experience,
    *,
    accelerator: Any,
    ppo_epochs: int,
    minibatch_size: int,
    gradient_accumulation_steps: int,
    temperature: float,
    clip: float,
    vf_clip: float | None,
    vf_coef: float,
    entropy_coef: float,
    max_grad_norm: float | None,
    generator: torch.Generator,
    on_optimizer_step: Callable[[], None] | None = None,
    check: Callable[[dict[str, torch.Tensor]], bool] | None = None,
) -> dict[str, float]:
    """Train the (wrapped) ActorCritic on `experience`; returns each statistic's mean over micro-batches.

    Statistics: policy_loss, value_loss, loss, entropy, clipfrac, approx_kl, vf_clipfrac
    (rlft.rl.core), each a float of this process. `accelerator` must have been built with
    `gradient_accumulation_steps` (its `accumulate` decides when gradients are synced and the
    optimizer steps). `on_optimizer_step` runs after every optimizer step (the LR schedule).
    `check` (the stage's NaN/Inf guard, rlft/guards.py) sees each micro-batch's losses before its backward
    and the gradient norm before each optimizer step; when it says False (skip), the gradients gathered
    for the minibatch so far are dropped and the micro-batch leaves no statistics. All skipped: {}.
    """
    from accelerate.utils import DistributedType

    if minibatch_size % gradient_accumulation_steps:
        raise ValueError(
            f"minibatch_size {minibatch_size} must be a multiple of gradient_accumulation_steps "
            f"{gradient_accumulation_steps} (each minibatch is split into that many equal micro-batches)"
        )
    micro_size = minibatch_size // gradient_accumulation_steps
    a = experience.response_mask.shape[1]
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    stats: dict[str, list[torch.Tensor]] = defaultdict(list)
    model.train()
    for _ in range(ppo_epochs):
        for minibatch in experience.minibatches(minibatch_size, generator=generator):
            for micro in minibatch.minibatches(micro_size, shuffle=False):
                with accelerator.accumulate(model):
                    # (b, A + 1, V): only the positions that predict the response (the prompt's are never read)
                    logits, values = model(micro.sequences, micro.attention_mask, logits_to_keep=a + 1)
                    logits = logits[
                        :, -a - 1 : -1
                    ]  # (b, A, V): the logits that predicted each response token
                    logp = logprobs_from_logits(logits, micro.responses, temperature=temperature)  # (b, A)
                    pg_loss, pg_stats = policy_loss(
                        logp, micro.old_logprobs, micro.advantages, micro.response_mask, clip=clip
                    )
                    vf_loss, vf_stats = value_loss(
                        values[:, -a - 1 : -1], micro.values, micro.returns, micro.response_mask, clip=vf_clip
                    )
                    with torch.set_grad_enabled(entropy_coef != 0 and torch.is_grad_enabled()):
                        entropy = entropy_from_logits(logits, micro.response_mask, temperature=temperature)
                    loss = pg_loss + vf_coef * vf_loss - entropy_coef * entropy
                    if check is not None and not check(
                        {"policy loss": pg_loss, "value loss": vf_loss, "entropy": entropy}
                    ):
                        optimizer.zero_grad()
                        continue
                    accelerator.backward(loss)
                    # DeepSpeed clips itself
                    if accelerator.sync_gradients and max_grad_norm is not None and not deepspeed:
                        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
                        if check is not None and not check({"gradient norm": norm}):
                            optimizer.zero_grad()
                            continue
                    optimizer.step()
                    optimizer.zero_grad()
                    if accelerator.sync_gradients and on_optimizer_step is not None:
                        on_optimizer_step()
                for name, value in {
                    "policy_loss": pg_loss,
                    "value_loss": vf_loss,
                    "loss": loss,
                    "entropy": entropy,
                    **pg_stats,
                    **vf_stats,
                }.items():
                    stats[name].append(value.detach().float())
    return {name: torch.stack(values).mean().item() for name, values in stats.items()}


def make_optimizer(
    policy: torch.nn.Module,
    critic: torch.nn.Module,
    *,
    lr: float,
    critic_lr: float,
    adam_eps: float,
    schedule: str,
    total_updates: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (fused where torch has the kernel: CPU and CUDA) over the trainable policy and critic
    parameters, a param group each (no weight decay), and the learning-rate schedule per optimizer
    step: "linear" decays to 0 over `total_updates` (Huang et al. 2024, sec. 7: lr annealing, Adam
    eps 1e-5), "constant" keeps it.

    Step the schedule after each optimizer step yourself; accelerate would step a prepared
    scheduler once per process.
    """
    if schedule not in ("linear", "constant"):
        raise ValueError(f"schedule must be linear or constant (got {schedule!r})")
    groups = [
        {"params": [p for p in policy.parameters() if p.requires_grad], "lr": lr},
        {"params": [p for p in critic.parameters() if p.requires_grad], "lr": critic_lr},
    ]
    params = [p for group in groups for p in group["params"]]
    # torch's fused AdamW: one kernel per parameter instead of ~10 elementwise passes over it; on 2 CPU
    # cores it cut the optimizer's share of a full-tuning update from ~22% of the time to ~5%
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(groups, eps=adam_eps, weight_decay=0.0, fused=fused or None)
    linear = schedule == "linear"
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: max(0.0, 1.0 - k / total_updates) if linear else 1.0
    )
    return optimizer, scheduler
