"""`kind: rloo`: REINFORCE Leave-One-Out on TRL's RLOOTrainer (critic-free online RL).

For each prompt the policy samples `num_generations` completions; each completion's baseline is
the mean reward of the *other* completions of its prompt (Ahmadian et al. 2024, "Back to Basics:
Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs", eq. 4).
TRL's RLOO puts a KL penalty to the starting model into the reward (`beta`, 0.05 by default).

Everything else (rewards from `reward_models`, prompt-only data, saving, task reward) is the
GRPO stage's: see rlft/stages/grpo.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlft.stages import grpo
from rlft.stages.base import StageContext, StageResult


class RLOOStage(grpo.GRPOStage):
    """REINFORCE Leave-One-Out on TRL's RLOOTrainer: the GRPO stage's keys, another baseline."""

    kind: Literal["rloo"] = Field(  # type: ignore[assignment]
        "rloo", description="REINFORCE Leave-One-Out on TRL's RLOOTrainer (critic-free online RL)"
    )

    trainer_config_class = "trl.trainer.rloo_config:RLOOConfig"


def run(cfg: RLOOStage, ctx: StageContext) -> StageResult:
    from trl import RLOOConfig, RLOOTrainer

    return grpo.run_online(cfg, ctx, trainer_class=RLOOTrainer, config_class=RLOOConfig)
