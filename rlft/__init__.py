"""rlft: a staged alignment pipeline for language models.

    import rlft
    results = rlft.Pipeline.from_yaml("quickstart").run()
    run = rlft.load_run("runs/quickstart")

Importing rlft is light on purpose: no torch, transformers, trl, deepspeed or wandb import
happens here; the names below are imported when first used, and the heavy libraries inside the
functions that need them.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (imported on first use)
_EXPORTS = {
    "Pipeline": "rlft.api",
    "Run": "rlft.api",
    "load_run": "rlft.api",
    "embed": "rlft.embeddings",
    "RlftError": "rlft.errors",
    "ConfigError": "rlft.errors",
    "DataError": "rlft.errors",
    "StageFailed": "rlft.pipeline",
    "SFTStage": "rlft.stages.sft",
    "RewardStage": "rlft.stages.reward",
    "DPOStage": "rlft.stages.dpo",
    "KTOStage": "rlft.stages.kto",
    "PPOStage": "rlft.stages.ppo",
    "GRPOStage": "rlft.stages.grpo",
    "RLOOStage": "rlft.stages.rloo",
    "ContrastiveStage": "rlft.stages.contrastive",
    "MultitaskStage": "rlft.stages.multitask",
    "EvaluateStage": "rlft.stages.evaluate",
    "GenerateStage": "rlft.stages.generate",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rlft' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
