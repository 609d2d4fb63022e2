"""Stage kinds. One explicit dict maps a `kind:` to the module that holds its config and `run`.

Each module defines ``Config`` (a pydantic model, a subclass of ``StageBase``) and
``run(cfg, ctx) -> StageResult``. Modules import only light things at the top; torch,
transformers and trl are imported inside ``run``.
"""

from __future__ import annotations

import importlib
from typing import Any

STAGES: dict[str, str] = {
    "sft": "rlft.stages.sft",
    "reward": "rlft.stages.reward",
    "dpo": "rlft.stages.dpo",
    "kto": "rlft.stages.kto",
    "ppo": "rlft.stages.ppo",
    "grpo": "rlft.stages.grpo",
    "rloo": "rlft.stages.rloo",
    "evaluate": "rlft.stages.evaluate",
}


def stage_module(kind: str) -> Any:
    return importlib.import_module(STAGES[kind])


def stage_config_class(kind: str) -> Any:
    """The config class of a kind, or None for an unknown kind."""
    return stage_module(kind).Config if kind in STAGES else None
