"""The child process of one stage: `python -m rlft.stages.runner WORK_DIR` (or under accelerate launch).

The pipeline writes ``WORK_DIR/plan.json`` (the stage's resolved config and where things are);
this process runs the stage and, on the main process, assembles the artifact (model, tokenizer,
stage.json, metrics.jsonl) in ``WORK_DIR/artifact`` and moves it into ``runs/<pipeline>/<stage>``
with one rename. Exit codes: 0 done, 2 bad input (message printed), 1 anything else.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from reward_models import RewardLoadError, RewardModelError, RewardOutputError, RewardSpecError
from rlft.artifacts import (
    git_commit,
    library_versions,
    model_files_hash,
    read_json,
    replace_dir,
    write_json_atomic,
)
from rlft.config import EvaluateConfig, TrackingConfig
from rlft.diskspace import disk_full_message, is_disk_full
from rlft.distributed import is_main_process, process_rank, world_size
from rlft.errors import RlftError
from rlft.log import ensure_logging, stage_log
from rlft.stages import stage_config_class, stage_module
from rlft.stages.base import StageContext
from rlft.stages.common import describe_peak_memory, peak_memory
from rlft.tracking import Tracker

# reward_models' errors about what the user gave (a spec, a function's output): one line, no traceback
REWARD_INPUT_ERRORS = (RewardLoadError, RewardModelError, RewardOutputError, RewardSpecError)
logger = logging.getLogger("rlft.stages.runner")  # not __name__: `python -m` runs this as __main__


def main(work_dir: str) -> int:
    ensure_logging()  # at the CLI's level: $RLFT_LOG_LEVEL, inherited
    work = Path(work_dir).resolve()
    with stage_log(work / "stage.log"):  # + the debug lines the console leaves out
        return _run(work)


def _run(work: Path) -> int:
    plan = read_json(work / "plan.json")
    if plan is None:
        logger.error(f"{work}/plan.json is missing or unreadable")
        return 2
    module = stage_module(plan["kind"])
    cfg = stage_config_class(plan["kind"]).model_validate(plan["stage"])
    main_process = is_main_process()
    logger.debug(
        f"stage {cfg.name} ({cfg.kind}): process {process_rank()} of {world_size()}, work folder {work}"
    )

    ctx = StageContext(
        pipeline=plan["pipeline"],
        run_dir=Path(plan["run_dir"]),
        work_dir=work,
        artifact_dir=work / "artifact",
        base_dir=Path(plan["base_dir"]),
        model_paths=plan["model_paths"],
        stage_dirs=plan.get("stage_dirs") or {},
        evaluate=EvaluateConfig.model_validate(plan["evaluate"]) if plan.get("evaluate") else None,
        tracking=TrackingConfig.model_validate(plan["tracking"]),
        resume_from=plan.get("resume_from"),
        strict=bool(plan.get("strict")),
        tracker=Tracker(work / "metrics.jsonl", main_process=main_process, log_dir=work / "artifact"),
    )
    record = {
        "stage": cfg.name,
        "kind": cfg.kind,
        "status": "running",
        "run_id": plan["run_id"],  # the pipeline run that made it: its W&B group is <pipeline>-<run_id>
        "config": plan["stage"],
        "config_hash": plan["config_hash"],
        "inputs": plan["inputs"],
        "base_dir": plan["base_dir"],  # where the pipeline file was: its relative paths resolve there
        "resumed_from": ctx.resume_from,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "started": time.time(),
        "pid": os.getpid(),
        "host": socket.gethostname(),
    }
    if main_process:
        ctx.artifact_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(work / "stage.json", record)

    from transformers import set_seed

    set_seed(cfg.seed)
    ctx.tracker.start_wandb(
        ctx.tracking,
        pipeline=ctx.pipeline,
        run_id=plan["run_id"],
        stage=cfg.name,
        kind=cfg.kind,
        config=plan["stage"],
    )
    start = time.time()
    try:
        result = module.run(cfg, ctx)
    except KeyboardInterrupt:  # Ctrl-C: stop cleanly; the checkpoints stay for the next run to resume from
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        logger.warning(f"stage '{cfg.name}' interrupted (Ctrl-C)")
        ctx.tracker.finish()
        if main_process:
            write_json_atomic(
                work / "stage.json", {**record, "status": "interrupted", "finished": time.time()}
            )
        return 130
    except (RlftError, *REWARD_INPUT_ERRORS) as e:  # the user's input: the message says what to fix
        if e.__cause__ is not None:  # e.g. the user's reward function raised: its traceback, to stage.log
            logger.debug("".join(traceback.format_exception(e.__cause__)))
        return _fail(work, record, ctx, main_process, str(e), code=2)
    except Exception as e:  # noqa: BLE001 - any failure: traceback to the log, status to stage.json
        if is_disk_full(e):
            return _fail(
                work,
                record,
                ctx,
                main_process,
                disk_full_message(ctx.checkpoint_dir, ctx.artifact_dir),
                code=2,
            )
        traceback.print_exc()
        return _fail(work, record, ctx, main_process, f"{type(e).__name__}: {e}", code=1)

    seconds = time.time() - start
    if ctx.guard is not None and ctx.guard.skips:
        result.info["nonfinite"] = ctx.guard.summary()
    result.info["peak_memory"] = peak_memory()
    if ctx.trainer_settings is not None:
        result.info["trainer_settings"] = json.loads(json.dumps(ctx.trainer_settings, default=str))
    ctx.log(describe_peak_memory(result.info["peak_memory"]))
    ctx.tracker.finish(result.metrics, model_dir=ctx.artifact_dir if result.has_model else None)
    rank = process_rank()
    if result.rank:
        write_json_atomic(work / "ranks" / f"rank-{rank}.json", result.rank)
    if not main_process:
        return 0
    record.update(
        status="done",
        seconds=round(seconds, 2),
        finished=time.time(),
        metrics=result.metrics,
        info=result.info,
        has_model=result.has_model,
        world_size=world_size(),
        artifact_hash=model_files_hash(ctx.artifact_dir) if result.has_model else None,
    )
    write_json_atomic(ctx.artifact_dir / "stage.json", record)
    if ctx.metrics_path.exists():
        (ctx.artifact_dir / "metrics.jsonl").write_bytes(ctx.metrics_path.read_bytes())
    replace_dir(ctx.artifact_dir, ctx.run_dir / cfg.name)
    write_json_atomic(work / "stage.json", {**record, "info": None})
    return 0


def _fail(work: Path, record: dict, ctx: StageContext, main_process: bool, error: str, *, code: int) -> int:
    logger.error(f"stage '{record['stage']}' failed: {error}")
    ctx.tracker.finish()
    if main_process:
        write_json_atomic(
            work / "stage.json", {**record, "status": "failed", "error": error, "finished": time.time()}
        )
    return code


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m rlft.stages.runner WORK_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
