"""The types every stage shares: its config base, the context it runs in, and what it returns.

A stage is a config plus a function (DESIGN.md decision 2): `stages/<kind>.py` declares a config
class (a `StageBase`, or a `TrainerStage` for the stages on a TRL trainer) and
`run(cfg, ctx: StageContext) -> StageResult`. These types sit below everything a stage uses to set
itself up (rlft/reference.py, rlft/stages/common.py), so those can be typed with them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from rlft.config import NAME_PATTERN, EvaluateConfig, ModelSource, Strict, TrackingConfig
from rlft.distributed import is_main_process
from rlft.guards import NonFiniteGuard
from rlft.tracking import Tracker
from rlft.trainer_fields import TRAINER_DEFAULTS

logger = logging.getLogger(__name__)


class StageBase(Strict):
    """Keys every stage accepts. A stage's own config class adds its kind's keys."""

    name: str = Field(pattern=NAME_PATTERN, description="unique in the pipeline; names the stage folder")
    kind: str = Field(description="which stage runs it (see `rlft config show`)")
    model: ModelSource | None = Field(
        None, description="what the stage starts from; defaults to the pipeline's `model`"
    )
    launch: str | None = Field(
        None,
        description="accelerate config (a shipped name like zero3, or a path); none: the stage runs as plain `python -m`",
    )
    seed: int = Field(0, description="seeds python, numpy and torch (and the trainer)")
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop",
        description="a NaN/Inf loss, gradient, reward or advantage: stop the stage (naming the step and what), "
        "or skip that batch (counted in stage.json)",
    )
    max_nonfinite: int = Field(
        10, ge=0, description="with on_nonfinite: skip, the stage still stops after this many skipped batches"
    )

    # "module:Class" of the TRL/transformers config dataclass that `trainer:` passes through to.
    trainer_config_class: ClassVar[str | None] = None
    # Whether the stage measures the pipeline's `evaluate:` task reward (its config then counts in the hash).
    uses_task_eval: ClassVar[bool] = False
    # Whether the stage trains on preference data; an override `data.KEY=...` without a stage
    # (`rlft run --set`, `rlft sweep --grid`) applies to every such stage.
    preference_data: ClassVar[bool] = False

    def references(self) -> list[tuple[str, str]]:
        """(key, stage name) for every `{from: STAGE}` in this stage's config."""
        refs = []
        for key in type(self).model_fields:
            value = getattr(self, key)
            if isinstance(value, ModelSource) and value.from_:
                refs.append((key, value.from_))
        return refs

    def data_sections(self) -> dict[str, Any]:
        """Every `data:` section of the stage (a rlft.data.DataConfig) by its key path: `{"data": ...}`
        for a stage with one, more for a stage with several (a multitask stage's `tasks[0].data`, ...).
        The pipeline checks that their files exist before the run and hashes them into its inputs."""
        data = getattr(self, "data", None)
        return {"data": data} if data is not None else {}

    def data_references(self) -> list[tuple[str, str, str]]:
        """(key path, stage name, file name) for every `{from: STAGE}` data source of the stage."""
        from rlft.data.config import stage_sources

        refs = []
        for key, data in self.data_sections().items():
            for split, source in stage_sources(data):
                refs.append((f"{key}.{split}", source.from_, source.stage_file))
        return refs

    def output_files(self) -> list[str]:
        """The data files the stage writes into its folder for later stages' `{from: STAGE}` data
        sources (a generate stage's pairs.jsonl, ...). Most kinds write none."""
        return []

    def input_files(self) -> dict[str, str]:
        """Other files the stage reads (eval prompts, `file.py` rewards), by key path: checked to
        exist before the run and hashed into the stage's inputs with its data. Most kinds have none."""
        return {}

    def hashed_config(self) -> dict[str, Any]:
        """The part of the config that decides the stage's result (what skipping compares). The NaN/Inf
        policy counts only when it skips: stopping changes nothing in a stage that finishes."""
        exclude = {"launch"} | ({"on_nonfinite", "max_nonfinite"} if self.on_nonfinite == "stop" else set())
        return self.model_dump(mode="json", by_alias=True, exclude=exclude)


class TrainerStage(StageBase):
    """A stage that trains on one of TRL's trainers, configured by its config dataclass
    (`trainer_config_class`) through the `trainer:` section."""

    trainer: dict[str, Any] = Field(
        {},
        description="passes through to the stage's TRL config dataclass (SFTConfig, DPOConfig, ...: `rlft config show KIND` names it); keys are "
        "checked against its fields",
    )

    def trainer_settings(
        self, *, runtime: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Every setting rlft gives the stage's trainer config, merged in one order (later wins):
        rlft's defaults (rlft.trainer_fields.TRAINER_DEFAULTS), the seed, the machine's and the
        run's (`runtime`: bf16, use_cpu, eval_strategy), the tuning method's, the stage's own
        (`defaults`, from its keys and data), and last the stage's `trainer:` section. What is not
        here is the trainer config's own default. `rlft validate` reads the same merge."""
        from rlft.models.tuning import tuning_trainer_defaults

        tuning = getattr(self, "tuning", None)
        settings = {
            **TRAINER_DEFAULTS,
            "seed": self.seed,
            **(runtime or {}),
            **(tuning_trainer_defaults(tuning) if tuning is not None else {}),
            **(defaults or {}),
            **self.trainer,
        }
        if "gradient_checkpointing" in self.trainer and "activation_checkpointing" not in self.trainer:
            # the old name: let transformers map it (it would lose to ours)
            settings.pop("activation_checkpointing")
        return settings


@dataclass
class StageContext:
    """Where a stage runs and what it may use. Built by the runner from the stage's plan file."""

    pipeline: str  # pipeline name
    run_dir: Path  # runs/<pipeline>
    work_dir: Path  # runs/<pipeline>/.work/<stage>: checkpoints, logs, partial metrics
    artifact_dir: Path  # where the stage writes its model/tokenizer; moved into place when done
    base_dir: Path  # folder of the pipeline file; relative paths resolve against it
    model_paths: dict[str, str]  # stage name -> final artifact folder, for `{from: STAGE}`
    # stage name -> folder of every finished earlier stage, for `{from: STAGE}` data sources
    stage_dirs: dict[str, str] = field(default_factory=dict)
    evaluate: EvaluateConfig | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resume_from: str | None = None  # last trainer checkpoint of a run of this stage that died
    strict: bool = False  # rlft run --strict: too little disk space for the stage is an error, not a warning
    tracker: Tracker | None = None  # metrics.jsonl (+ W&B, TensorBoard)
    # what a TRL stage gave its trainer config (rlft's merge, before the config's own defaults):
    # kept in stage.json (info.trainer_settings), so a plain TRL script can be given the same
    trainer_settings: dict[str, Any] | None = None
    guard: NonFiniteGuard | None = None  # what a NaN/Inf does (rlft/guards.py); made by `nonfinite_guard`

    def nonfinite_guard(self, cfg: StageBase) -> NonFiniteGuard:
        """The stage's guard against NaN/Inf, made once from `cfg.on_nonfinite` and `cfg.max_nonfinite`."""
        if self.guard is None:
            self.guard = NonFiniteGuard(
                stage=cfg.name,
                mode=cfg.on_nonfinite,
                max_skips=cfg.max_nonfinite,
                checkpoint_dir=self.checkpoint_dir,
            )
        return self.guard

    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.work_dir / "metrics.jsonl"

    @property
    def cache_dir(self) -> Path:
        """Results reusable across stages and runs (reference log-probs), keyed by content:
        runs/<pipeline>/cache, or $RLFT_CACHE_DIR when set (`rlft sweep` points share one)."""
        return Path(os.environ.get("RLFT_CACHE_DIR") or self.run_dir / "cache")

    @property
    def is_main_process(self) -> bool:
        return is_main_process()

    def log(self, message: str) -> None:
        """An info line in the stage's log (the main process's only: rlft.log). Warnings go to a
        module's logger: `logging.getLogger(__name__).warning(...)`."""
        logger.info(message)


@dataclass
class StageResult:
    """What a stage returns: its metrics summary and facts worth recording in stage.json."""

    # summary: final train/eval metrics, task_reward, ...
    metrics: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # parameters, tokenizer fix-ups, data report, ...
    has_model: bool = True  # False for stages that only measure (evaluate)
    # this process's view (see rank_summary), one file per rank
    rank: dict[str, Any] = field(default_factory=dict)
