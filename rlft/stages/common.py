"""What the stages share to set themselves up and finish: the policy and its data, the trainer
config, the reference-free save, the task reward. Above rlft/reference.py, below the stage kinds."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.errors import ConfigError
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.trainer_fields import OWNED

logger = logging.getLogger(__name__)


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


def training_callbacks(cfg: Any, ctx: StageContext) -> list[Any]:
    """The callbacks every TRL stage's trainer gets: its logs to the tracker (and rlft.faults' hooks),
    and the NaN/Inf guard of `cfg.on_nonfinite` (rlft/guards.py)."""
    from transformers import TrainerCallback

    from rlft.guards import trainer_guard
    from rlft.tracking import trainer_callback

    class DiskSpace(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None:
                check_disk_space(
                    cfg,
                    ctx,
                    model,
                    steps=state.max_steps - state.global_step,
                    save_steps=args.save_steps if args.save_strategy == "steps" else None,
                    save_total_limit=args.save_total_limit,
                )

    return [trainer_callback(ctx.tracker), trainer_guard(ctx.nonfinite_guard(cfg)), DiskSpace()]


def check_disk_space(
    cfg: Any,
    ctx: StageContext,
    model: Any,
    *,
    steps: int,
    save_steps: int | None,
    save_total_limit: int | None,
) -> None:
    """Before training, on the main process: the stage's checkpoints and model against the free space of
    its work folder (rlft/diskspace.py); a warning, an error under `rlft run --strict`."""
    from rlft.diskspace import check_free_space, checkpoints_kept, write_estimate

    if not ctx.is_main_process:
        return
    kept = checkpoints_kept(steps=steps, save_steps=save_steps, save_total_limit=save_total_limit)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    needed = write_estimate(model, checkpoints=kept)
    check_free_space(ctx.work_dir, needed, stage=cfg.name, checkpoints=kept, strict=ctx.strict)


def build_trainer_args(
    config_class: Any, cfg: TrainerStage, ctx: StageContext, *, has_eval: bool, defaults: dict[str, Any]
) -> Any:
    """The stage's TRL config (`config_class`) from its merged settings (TrainerStage.trainer_settings)."""
    import torch

    for key, why in OWNED.items():
        if key in cfg.trainer:
            raise ConfigError(f"stages.{cfg.name}.trainer.{key}: set by rlft: {why}")
    cuda = torch.cuda.is_available()
    runtime = {
        "bf16": cuda and torch.cuda.is_bf16_supported(),  # no native bf16 on CPU: ~15x slower there
        "use_cpu": not cuda,  # also what makes several CPU processes train together (gloo)
        "eval_strategy": "steps" if has_eval else "no",
    }
    args = {**cfg.trainer_settings(runtime=runtime, defaults=defaults), "output_dir": str(ctx.checkpoint_dir)}
    logger.debug(f"{config_class.__name__} settings from rlft and the stage: {args}")
    ctx.trainer_settings = {k: v for k, v in args.items() if k != "output_dir"}
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
    unfreezing: Any  # the tuning method's gradual-unfreezing schedule (rlft.models.tuning), or None
    info: dict[str, Any]  # parameters, tokenizer fix-ups, model description: recorded in stage.json

    @property
    def callbacks(self) -> list[Any]:
        """The trainer callbacks the tuning method needs (a TRL stage adds them to its trainer)."""
        return [self.unfreezing.callback()] if self.unfreezing is not None else []


def load_policy(cfg: Any, ctx: StageContext, *, resolved: Any = None) -> Policy:
    """Resolve `cfg.model` (unless given `resolved`), load tokenizer (with its logged fix-ups) and
    model (an adapter-only start merged first), apply `cfg.tuning`. Every policy stage starts here."""
    from rlft.models.loading import load_tokenizer, resolve_source
    from rlft.models.prompt_learning import is_prompt_learning
    from rlft.models.tuning import apply_tuning, count_parameters, describe_parameters, gradual_unfreezing
    from rlft.reference import load_merged_model

    if resolved is None:
        resolved = resolve_source(
            cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
        )
    ctx.log(f"model: {resolved.description}")
    tokenizer, fixups = load_tokenizer(resolved)
    start = load_merged_model(resolved, dtype=cfg.model.dtype, tokenizer=tokenizer, log=ctx.log)
    keeps_prompt = is_prompt_learning(start)  # before tuning: a prompt re-attached from the artifact
    model = apply_tuning(start, cfg.tuning, tokenizer=tokenizer)
    params = count_parameters(model)
    ctx.log(describe_parameters(cfg.tuning, params))
    info = {"parameters": params, "tokenizer_fixups": fixups, "model": resolved.description}
    if keeps_prompt:
        info["start_keeps_prompt"] = True
    return Policy(start, model, tokenizer, gradual_unfreezing(model, cfg.tuning, log=ctx.log), info)


def load_data(
    cfg: Any, ctx: StageContext, *, formats: tuple[str, ...], tokenizer: Any, key: str = "data"
) -> Any:
    """`cfg.data` (or the data section `key`) through the data layer, with the stage's rejects file and
    key path; `{from: STAGE}` sources read that stage's file (ctx.stage_dirs)."""
    from rlft.data import load_stage_data
    from rlft.data.config import with_stage_paths

    section = f"stages.{cfg.name}.{key}"
    try:
        data = with_stage_paths(getattr(cfg, key), ctx.stage_dirs, section=section)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return load_stage_data(
        data,
        formats=formats,
        base_dir=ctx.base_dir,
        rejects_path=ctx.work_dir / "rejects.jsonl",
        section=section,
        tokenizer=tokenizer,
    )


def build_reward_fn(cfg: Any, ctx: StageContext) -> Any:
    """The stage's `reward:` as one function f(prompts, completions, **fields) (reward_models.CompositeReward),
    its reward models on this process's device. PPO calls it as is; GRPO/RLOO split it into its parts."""
    import os

    import torch

    from reward_models import build_reward

    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    try:
        return build_reward(
            cfg.reward.to_spec(), stage_paths=ctx.model_paths, base_dir=ctx.base_dir, device=device
        )
    except ValueError as e:  # RewardSpecError, RewardLoadError, RewardModelError
        raise ConfigError(
            f"stages.{cfg.name}.{e}" if str(e).startswith("reward") else f"stages.{cfg.name}.reward: {e}"
        ) from None


def finish_policy_stage(
    cfg: Any, ctx: StageContext, trainer: Any, *, metrics: dict, info: dict
) -> StageResult:
    """Save a policy trained by a TRL trainer (whole, also under ZeRO-3/FSDP; adapters merged) and
    measure its task reward.

    Every process must call it: gathering sharded weights is a collective; only the main one writes.
    """
    from rlft.distributed import gathered_model

    rank = rank_summary(trainer)  # before saving: merging LoRA changes the weights in place
    model = gathered_model(trainer)  # whole on the main process, None on the others
    if model is not None:
        save_policy(
            model,
            trainer.processing_class,
            cfg,
            ctx,
            metrics=metrics,
            info=info,
            step=trainer.state.global_step,
        )
    return StageResult(metrics=metrics, info=info, rank=rank)


def save_policy(
    model: Any, tokenizer: Any, cfg: Any, ctx: StageContext, *, metrics: dict, info: dict, step: int
) -> None:
    """On the main process, with the whole model: write it into the artifact (adapters merged) and, when
    the stage evaluates, add its task reward to `metrics` (its samples to `info`)."""
    from rlft.models.tuning import model_to_run, save_model

    info["saved"] = save_model(model, tokenizer, ctx.artifact_dir)
    if cfg.evaluate:
        result = measure_task_reward(model_to_run(model), tokenizer, ctx)
        if result is not None:
            metrics["task_reward"] = result["task_reward"]
            info["samples"] = result["samples"]
            ctx.tracker.log({"task/reward": result["task_reward"]}, step=step)


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
        if line.startswith("WARNING "):  # the report's text marks its warnings; the log has levels
            logger.warning(line.removeprefix("WARNING "))
        else:
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


def measure_task_reward(model: Any, tokenizer: Any, ctx: StageContext) -> dict[str, Any] | None:
    """The pipeline's verifiable task reward of greedy generations (None when no `evaluate:`)."""
    if ctx.evaluate is None or not ctx.is_main_process:
        return None
    from reward_models.loading import RewardLoadError, load_function
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
