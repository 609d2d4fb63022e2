"""What every stage shares: its config base, the context it runs in, and what it returns."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from rlft.config import EvaluateConfig, ModelSource, Strict, TrackingConfig


class StageBase(Strict):
    """Keys every stage accepts. A stage's own config class adds its kind's keys."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    )  # unique in the pipeline; names the stage folder
    kind: str  # which stage module runs it (see rlft.stages.STAGES)
    model: ModelSource | None = None  # what the stage starts from; defaults to the pipeline's `model`
    launch: str | None = None  # accelerate config file; none: the stage runs as plain `python -m`
    seed: int = 0  # seeds python, numpy and torch (and the trainer)

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

    def hashed_config(self) -> dict[str, Any]:
        """The part of the config that decides the stage's result (what skipping compares)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"launch"})


@dataclass
class StageContext:
    """Where a stage runs and what it may use. Built by the runner from the stage's plan file."""

    pipeline: str  # pipeline name
    run_dir: Path  # runs/<pipeline>
    work_dir: Path  # runs/<pipeline>/.work/<stage>: checkpoints, logs, partial metrics
    artifact_dir: Path  # where the stage writes its model/tokenizer; moved into place when done
    base_dir: Path  # folder of the pipeline file; relative paths resolve against it
    model_paths: dict[str, str]  # stage name -> final artifact folder, for `{from: STAGE}`
    evaluate: EvaluateConfig | None = None
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    resume_from: str | None = None  # last trainer checkpoint of a run of this stage that died
    tracker: Any = None  # rlft.tracking.Tracker: metrics.jsonl (+ W&B)

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
        return int(os.environ.get("RANK", "0")) == 0

    def log(self, message: str) -> None:
        """Print on the main process only."""
        if self.is_main_process:
            print(f"[rlft] {message}", flush=True)


@dataclass
class StageResult:
    """What a stage returns: its metrics summary and facts worth recording in stage.json."""

    metrics: dict[str, Any] = field(
        default_factory=dict
    )  # summary: final train/eval metrics, task_reward, ...
    info: dict[str, Any] = field(default_factory=dict)  # parameters, tokenizer fix-ups, data report, ...
    has_model: bool = True  # False for stages that only measure (evaluate)
    rank: dict[str, Any] = field(
        default_factory=dict
    )  # this process's view (see rank_summary), one file per rank


def rank_summary(trainer: Any) -> dict[str, Any]:
    """What each process saw: world size, logged losses and a checksum of its final weights.

    Written to `ranks/rank-N.json` beside the artifact, so a multi-process run can be checked:
    every rank must report the same world size, losses and checksum.
    """
    import torch

    params = list(trainer.accelerator.unwrap_model(trainer.model).parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 shards: gather them to see the whole weights
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params)
    with torch.no_grad(), gather:
        checksum = sum(p.detach().float().sum().item() for p in params)
    return {
        "rank": trainer.args.process_index,
        "world_size": trainer.args.world_size,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "param_checksum": checksum,
    }


# rlft's defaults for every TRL trainer config, applied unless the stage's `trainer:` sets the key.
TRAINER_DEFAULTS: dict[str, Any] = {
    "activation_checkpointing": False,  # TRL turns it on; on small models it only costs time (ENVIRONMENT.md)
    "logging_steps": 5,  # log often: runs are short, curves are what users look at
    "save_strategy": "steps",  # checkpoints make a stage that died resumable
    "save_steps": 100,
    "save_total_limit": 2,  # keep the last two checkpoints
    "report_to": "none",  # rlft opens the W&B run itself (grouped by pipeline), see rlft/tracking.py
    "per_device_train_batch_size": 8,
    "num_train_epochs": 1,
    "dataloader_num_workers": 0,
    "eval_steps": 50,
}
# Keys rlft sets itself; a stage may not set them in `trainer:`.
OWNED = {"output_dir": "the stage folder is runs/<pipeline>/<stage> (change it with --run-dir)"}


def build_trainer_args(
    config_class: Any, cfg: Any, ctx: StageContext, *, has_eval: bool, defaults: dict[str, Any]
) -> Any:
    """A TRL config: rlft's defaults, the tuning method's and the stage's own, then its `trainer:` section."""
    import torch

    from rlft.errors import ConfigError
    from rlft.models.tuning import tuning_trainer_defaults

    for key, why in OWNED.items():
        if key in cfg.trainer:
            raise ConfigError(f"stages.{cfg.name}.trainer.{key}: set by rlft: {why}")
    cuda = torch.cuda.is_available()
    args = {
        **TRAINER_DEFAULTS,
        "bf16": cuda and torch.cuda.is_bf16_supported(),  # no native bf16 on CPU: ~15x slower there
        "use_cpu": not cuda,  # also what makes several CPU processes train together (gloo)
        "seed": cfg.seed,
        "eval_strategy": "steps" if has_eval else "no",
        **(tuning_trainer_defaults(cfg.tuning) if hasattr(cfg, "tuning") else {}),
        **defaults,
        **cfg.trainer,
        "output_dir": str(ctx.checkpoint_dir),
    }
    if "gradient_checkpointing" in cfg.trainer and "activation_checkpointing" not in cfg.trainer:
        args.pop("activation_checkpointing")  # the old name: let transformers map it (it would lose to ours)
    try:
        return config_class(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"stages.{cfg.name}.trainer: {e}") from None


@dataclass
class Policy:
    """A policy stage's starting model, tuned: what SFT, DPO, KTO, GRPO and RLOO set up first."""

    start: Any  # the starting model before tuning (references are planned from it)
    model: Any  # the model that trains (a PeftModel for adapter methods)
    tokenizer: Any
    callbacks: list[Any]  # the tuning method's trainer callbacks (gradual unfreezing)
    info: dict[str, Any]  # parameters, tokenizer fix-ups, model description: recorded in stage.json


def load_policy(cfg: Any, ctx: StageContext) -> Policy:
    """Resolve `cfg.model`, load tokenizer (with its logged fix-ups) and model, apply `cfg.tuning`."""
    from rlft.models.loading import load_tokenizer, resolve_source
    from rlft.models.prompt_learning import is_prompt_learning
    from rlft.models.tuning import apply_tuning, count_parameters, describe_parameters, tuning_callbacks
    from rlft.reference import load_merged_model

    resolved = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    ctx.log(f"model: {resolved.description}")
    tokenizer, fixups = load_tokenizer(resolved, log=ctx.log)
    start = load_merged_model(resolved, dtype=cfg.model.dtype, tokenizer=tokenizer, log=ctx.log)
    keeps_prompt = is_prompt_learning(start)  # before tuning: a prompt re-attached from the artifact
    model = apply_tuning(start, cfg.tuning, tokenizer=tokenizer)
    params = count_parameters(model)
    ctx.log(describe_parameters(cfg.tuning, params))
    info = {"parameters": params, "tokenizer_fixups": fixups, "model": resolved.description}
    if keeps_prompt:
        info["start_keeps_prompt"] = True
    return Policy(start, model, tokenizer, tuning_callbacks(model, cfg.tuning, log=ctx.log), info)


def load_data(cfg: Any, ctx: StageContext, *, formats: tuple[str, ...], tokenizer: Any) -> Any:
    """`cfg.data` through the data layer, with the stage's rejects file and key path."""
    from rlft.data import load_stage_data

    return load_stage_data(
        cfg.data,
        formats=formats,
        base_dir=ctx.base_dir,
        rejects_path=ctx.work_dir / "rejects.jsonl",
        section=f"stages.{cfg.name}.data",
        tokenizer=tokenizer,
    )


def finish_policy_stage(
    cfg: Any, ctx: StageContext, trainer: Any, *, metrics: dict, info: dict
) -> StageResult:
    """Save a trained policy (whole, also under ZeRO-3/FSDP; adapters merged) and measure its task reward.

    Every process must call it: gathering sharded weights is a collective; only the main one writes.
    """
    from rlft.distributed import gathered_model
    from rlft.models.tuning import model_to_run, save_model

    rank = rank_summary(trainer)  # before saving: merging LoRA changes the weights in place
    model = gathered_model(trainer)  # whole on the main process, None on the others
    if model is not None:
        info["saved"] = save_model(model, trainer.processing_class, ctx.artifact_dir)
        if cfg.evaluate:
            result = measure_task_reward(model_to_run(model), trainer.processing_class, ctx)
            if result is not None:
                metrics["task_reward"] = result["task_reward"]
                info["samples"] = result["samples"]
                ctx.tracker.log({"task/reward": result["task_reward"]}, step=trainer.state.global_step)
    return StageResult(metrics=metrics, info=info, rank=rank)


def report_data(data: Any, tokenizer: Any, ctx: StageContext, *, max_length: int | None) -> dict[str, Any]:
    """The stage's data report (lengths, duplicates, tokenisation checks): logged, and written into the artifact."""
    from rlft.data.report import data_report, write_report
    from rlft.data.tokenization import log_lines

    report = data_report(
        data.train,
        format=data.format,
        style=data.report["style"],
        tokenizer=tokenizer,
        max_length=max_length,
        validation=data.report,
    )
    for line in log_lines(report["tokenization"]):
        ctx.log(line)
    if ctx.is_main_process:
        write_report(report, ctx.artifact_dir)
    return report


def as_explicit_preferences(data: Any, cfg: Any, ctx: StageContext) -> Any:
    """Preference data with the prompt split out of chosen/rejected when it was implicit (says so)."""
    return convert_data(data, cfg, ctx, target="preference")


def convert_data(data: Any, cfg: Any, ctx: StageContext, *, target: str) -> Any:
    """The stage's data converted to format `target` (rlft.data.formats.CONVERSIONS), noted in its
    report and the log; e.g. preference pairs -> unpaired rows for KTO."""
    from rlft.data.formats import convert

    for split in ("train", "eval"):
        ds = getattr(data, split)
        if ds is None:
            continue
        converted, note = convert(ds, source=data.format, target=target)
        setattr(data, split, converted)
        if note:
            data.report["conversions"].append(f"stages.{cfg.name}.data.{split}: {note}")
            ctx.log(f"data.{split}: {note}")
    data.format = target
    return data


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def measure_task_reward(model: Any, tokenizer: Any, ctx: StageContext) -> dict[str, Any] | None:
    """The pipeline's verifiable task reward of greedy generations (None when no `evaluate:`)."""
    if ctx.evaluate is None or not ctx.is_main_process:
        return None
    from reward_models.loading import RewardLoadError, load_function
    from rlft.errors import ConfigError
    from rlft.evaluation import task_reward

    try:
        reward_fn = load_function(ctx.evaluate.reward, base_dir=ctx.base_dir)
    except RewardLoadError as e:
        raise ConfigError(f"evaluate.reward: {e}") from None
    path = Path(ctx.evaluate.prompts).expanduser()
    path = path if path.is_absolute() else ctx.base_dir / path
    if not path.is_file():
        raise ConfigError(f"evaluate.prompts: {path} does not exist")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = rows[: ctx.evaluate.max_prompts] if ctx.evaluate.max_prompts else rows
    was_training = model.training
    model.eval()
    result = task_reward(
        model,
        tokenizer,
        rows,
        reward_fn,
        max_new_tokens=ctx.evaluate.max_new_tokens,
        batch_size=ctx.evaluate.batch_size,
    )
    model.train(was_training)
    ctx.log(f"task reward on {result['n']} held-out prompts: {result['task_reward']:.3f}")
    for sample in result.get("samples", [])[:3]:
        ctx.log(f"  sample: {sample}")
    return result


def peak_memory() -> dict[str, float]:
    """This process's peak memory so far, in MiB: resident set size, and max allocated on the GPU.

    A stage runs in its own process (DESIGN.md decision 3), so for the runner this is the stage's peak.
    RSS counts everything the process touched (Python, libraries, data), not only tensors.
    """
    import resource
    import sys

    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak = {"rss_mib": round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)}
    if torch.cuda.is_available():
        peak["gpu_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return peak


def describe_peak_memory(peak: dict[str, float]) -> str:
    gpu = (
        f", GPU max allocated {peak['gpu_max_allocated_mib']:,.0f} MiB"
        if "gpu_max_allocated_mib" in peak
        else ""
    )
    return f"peak memory: RSS {peak['rss_mib']:,.0f} MiB{gpu}"
