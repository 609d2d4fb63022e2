"""Stage kinds. One explicit dict maps a `kind:` to the class of its config, in the module that
also holds its `run(cfg, ctx) -> StageResult`.

Modules import only light things at the top (pydantic, rlft's config schemas); torch,
transformers and trl are imported inside ``run``. They are imported when a pipeline names their
kind, not before: `import rlft.stages` imports none of them.
"""

from __future__ import annotations

import importlib
from typing import Any

STAGES: dict[str, str] = {
    "sft": "rlft.stages.sft:SFTStage",
    "reward": "rlft.stages.reward:RewardStage",
    "dpo": "rlft.stages.dpo:DPOStage",
    "kto": "rlft.stages.kto:KTOStage",
    "ppo": "rlft.stages.ppo:PPOStage",
    "grpo": "rlft.stages.grpo:GRPOStage",
    "rloo": "rlft.stages.rloo:RLOOStage",
    "contrastive": "rlft.stages.contrastive:ContrastiveStage",
    "multitask": "rlft.stages.multitask:MultitaskStage",
    "evaluate": "rlft.stages.evaluate:EvaluateStage",
    "generate": "rlft.stages.generate:GenerateStage",
}


def stage_module(kind: str) -> Any:
    """The module of a kind: its config class and its `run`."""
    return importlib.import_module(STAGES[kind].partition(":")[0])


def stage_config_class(kind: str) -> Any:
    """The config class of a kind, or None for an unknown kind."""
    if kind not in STAGES:
        return None
    return getattr(stage_module(kind), STAGES[kind].partition(":")[2])
