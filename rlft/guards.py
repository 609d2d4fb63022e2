"""NaN and Inf in training: stop the stage naming the step and what went non-finite, or skip the batch.

A non-finite loss, gradient norm, reward or advantage poisons the weights at the next optimizer step,
and every step after it. Each training loop asks its stage's `NonFiniteGuard` before it steps:

    on_nonfinite: stop   (default) the stage fails at once: "non-finite policy loss (nan) at step 7";
                         its checkpoints, all from before that step, are kept
    on_nonfinite: skip   the batch is dropped (no optimizer step from it), the skip counted and logged;
                         past `max_nonfinite` skips the stage stops as above. The count goes into stage.json.

TRL stages check in a TrainerCallback (`trainer_guard`): the gradients before each optimizer step
(a skip sets them to None, which torch optimizers pass over), and the logged loss and gradient norm.
rlft's own loops (PPO, multitask) call `check` on their rewards, advantages and losses.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.artifacts import complete_checkpoints
from rlft.errors import RlftError

logger = logging.getLogger(__name__)


class NonFiniteError(RlftError):
    """A loss, gradient, reward or advantage was NaN or infinite (and the stage does not skip such batches)."""


def non_finite(values: dict[str, Any]) -> dict[str, float]:
    """The entries of `values` (numbers, or tensors reduced to their first non-finite element) that are NaN or Inf."""
    bad = {}
    for name, value in values.items():
        if value is None:
            continue
        if hasattr(value, "isfinite"):  # a tensor
            finite = value.detach().isfinite()
            if bool(finite.all()):
                continue
            value = value.detach()[~finite].flatten()[0]
        value = float(value)
        if not math.isfinite(value):
            bad[name] = value
    return bad


@dataclass
class NonFiniteGuard:
    """One stage's policy for non-finite values, and its count of skipped batches."""

    stage: str = "stage"
    mode: str = "stop"  # stop | skip
    max_skips: int = 10
    checkpoint_dir: Path | None = None  # named in the error: the last complete checkpoint there is kept
    skipped_steps: list[int] = field(default_factory=list)

    def check(self, values: dict[str, Any], *, step: int) -> bool:
        """True when every value is finite. Else: stop mode raises NonFiniteError; skip mode counts the skip
        and returns False (the caller drops the batch), raising once the skips pass `max_skips`."""
        bad = non_finite(values)
        if not bad:
            return True
        what = ", ".join(f"{name} ({value})" for name, value in bad.items())
        if self.mode == "skip" and len(self.skipped_steps) < self.max_skips:
            self.skipped_steps.append(step)
            logger.warning(
                f"stages.{self.stage}: non-finite {what} at step {step}: batch skipped "
                f"({len(self.skipped_steps)} of at most {self.max_skips})"
            )
            return False
        raise NonFiniteError(self.message(what, step))

    def message(self, what: str, step: int) -> str:
        if self.mode == "skip":
            head = f"stages.{self.stage}: non-finite {what} at step {step}, after {self.max_skips} skipped batches (max_nonfinite)"
        else:
            head = f"stages.{self.stage}: non-finite {what} at step {step}"
        kept = complete_checkpoints(self.checkpoint_dir) if self.checkpoint_dir is not None else []
        where = (
            f"the last good checkpoint, {kept[-1].name}, is kept in {kept[-1].parent}"
            if kept
            else "no checkpoint was written before it"
        )
        return (
            f"{head}; training stopped, {where}. Lower the learning rate, check the data and reward, "
            f"or set stages.{self.stage}.on_nonfinite: skip to drop such batches"
        )

    @property
    def skips(self) -> int:
        return len(self.skipped_steps)

    def summary(self) -> dict[str, Any]:
        """What stage.json records: how many batches were skipped, and at which steps."""
        return {"skipped": self.skips, "steps": self.skipped_steps[:100]}


def _all_finite(grads: list[Any]) -> bool:
    """Whether every gradient element is finite. Fast path: the per-tensor norms in one fused call
    (`torch._foreach_norm`) and one check of them (a NaN or inf anywhere makes its tensor's norm
    non-finite); only when a norm is not finite (or the tensors sit on several devices) is each tensor
    checked element by element, since a low-precision norm can overflow while every element is finite.
    Measured on the quickstart's model (567k parameters, 21 gradient tensors, one CPU thread): 0.15 ms
    per optimizer step, against 2.1 ms for the per-tensor check (the step itself takes about 25 ms)."""
    import torch

    try:
        if bool(torch.stack(torch._foreach_norm(grads)).isfinite().all()):
            return True
    except RuntimeError:  # tensors on several devices
        pass
    return bool(torch.stack([g.isfinite().all() for g in grads]).all())


def trainer_guard(guard: NonFiniteGuard) -> Any:
    """A transformers TrainerCallback applying `guard` to a TRL trainer: the gradients before each
    optimizer step (skip: set to None, so the optimizer leaves the weights as they are), and the
    loss and gradient norm of each log (stop mode). Under DeepSpeed the gradients are its own; only the
    logged values are checked there."""
    import torch
    from transformers import TrainerCallback

    class NonFiniteCallback(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
            if not grads or _all_finite(grads):
                return
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
            if not guard.check({"gradient norm": norm}, step=state.global_step + 1):
                for p in model.parameters():
                    p.grad = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if guard.mode == "stop" and logs:
                named = {"train loss": logs.get("loss"), "gradient norm": logs.get("grad_norm")}
                guard.check(
                    {k: v for k, v in named.items() if isinstance(v, int | float)}, step=state.global_step
                )

    return NonFiniteCallback()
