"""Run a pipeline: plan the run folder, skip finished stages, launch each stage in its own process.

    runs/<pipeline>/
      <stage>/            finished artifact: HF model + tokenizer + stage.json + metrics.jsonl + stage.log
      .work/<stage>/      a stage in progress: plan.json, stage.json (running/failed), checkpoints/, stage.log
      models/             tiny models built for `model: {tiny: ...}`
      cache/              reference log-probs of DPO/KTO stages, by content key (rlft/reference.py)
      summary.json        one entry per stage: stage, kind, status, seconds, task_reward, metrics
      pipeline.yaml       the pipeline file this run was started from

A stage is skipped when its stage.json says done with the same config hash and input hashes.
A stage whose earlier run died resumes from its last trainer checkpoint when its config and
inputs are unchanged. Each stage runs as `accelerate launch --config_file <launch> -m
rlft.stages.runner <work>` when it has a launch config, else `python -m rlft.stages.runner <work>`;
when `rlft run` itself was started under `accelerate launch`, every rank runs each stage
in-process instead, and rank 0 alone does the file work (rlft/launched.py).
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlft import stage_server, yamlio
from rlft.artifacts import (
    complete_checkpoints,
    hash_json,
    hash_path,
    is_complete_checkpoint,
    link_dir,
    read_json,
    write_json_atomic,
)
from rlft.config import ModelSource
from rlft.data.config import as_sources
from rlft.distributed import outer_launch
from rlft.errors import ConfigError, RlftError
from rlft.launch_rules import check_launch_rules
from rlft.launched import World
from rlft.log import ensure_logging
from rlft.pipeline_file import PipelineSpec
from rlft.processes import stop_child, stop_pid
from rlft.resources import find_launch_config, resolved_launch_config
from rlft.runlock import hold_run_folder
from rlft.stages.base import StageBase

logger = logging.getLogger(__name__)


class StageFailed(RlftError):
    """A stage's process exited with an error; its log says why."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while a stage ran: its process was stopped; the message says what a run again does."""


@dataclass
class StageOutcome:
    name: str
    kind: str
    status: str  # ran, skipped, shared (linked from another run), failed, kept, not run
    record: dict[str, Any] = field(default_factory=dict)  # the stage's stage.json


def run_pipeline(
    pipeline: PipelineSpec,
    *,
    run_dir: Path | None = None,
    only: str | None = None,
    from_stage: str | None = None,
    force: bool = False,
    launch: str | None = None,
    console: Any = None,
    reuse: list[Path] | tuple[Path, ...] = (),
    strict: bool = False,
) -> list[StageOutcome]:
    """Run the selected stages in order. Raises StageFailed when a stage fails (after the summary).

    `reuse`: run folders of other runs (earlier points of a sweep). A stage that must run here but
    is done there with the same config hash and input hashes is hard-linked from there instead
    (status "shared"): the same test that skips a finished stage, across folders.

    Under an outer `accelerate launch` (rlft/launched.py) rank 0 walks the stages and the other
    ranks run the ones it sends them; they return no outcomes.
    """
    ensure_logging()
    check_launch_rules(pipeline, launch=launch)  # known-bad stage x launch combinations, before any work
    options = dict(
        run_dir=run_dir,
        only=only,
        from_stage=from_stage,
        force=force,
        launch=launch,
        console=console,
        reuse=reuse,
        strict=strict,
    )
    if not outer_launch():
        with stage_server.serving():  # single-process stages start with the libraries imported
            return _run_stages(pipeline, **options, world=None)
    world = World.join()
    if world.rank != 0:
        code = world.follow()
        world.leave()
        if code:
            raise StageFailed(
                f"rank {world.rank}: the pipeline failed on rank 0 (exit code {code}); its output says why"
            )
        return []
    code = 1
    try:
        outcomes = _run_stages(pipeline, **options, world=world)
        code = 0
        return outcomes
    finally:
        world.send({"stop": code})
        world.leave()


# ---------------------------------------------------------------------------------------------
# What to do with a stage: a pure decision from what the run folders hold
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    """Done here with the same config and inputs: nothing to do."""

    record: dict[str, Any]  # its stage.json


@dataclass(frozen=True)
class Share:
    """Done in another run (an earlier sweep point) with the same config and inputs: hard-link it here."""

    folder: Path
    record: dict[str, Any]


@dataclass(frozen=True)
class Resume:
    """An earlier run of this stage, with the same config and inputs, died: go on from its last checkpoint."""

    checkpoint: str


@dataclass(frozen=True)
class Run:
    """Run the stage from the start."""


Decision = Skip | Share | Resume | Run


@dataclass(frozen=True)
class StageFacts:
    """What the run folders hold about a stage, read from disk (`read_stage_facts`)."""

    done: dict[str, Any] | None  # its finished artifact's stage.json, when finished
    elsewhere: list[tuple[Path, dict[str, Any] | None]]  # (folder, stage.json) in the runs that may be shared
    plan: dict[str, Any] | None  # plan.json of an unfinished run of it (its work folder)
    checkpoints: list[str]  # that run's complete checkpoints, oldest first


def decide(config_hash: str, inputs: dict[str, Any], facts: StageFacts, *, force: bool) -> Decision:
    """Skip | Share | Resume | Run for a stage whose config and inputs hash as given.

    Done with the same config hash and input hashes here: skip; done so in another run: share;
    an unfinished run with the same hashes left a complete checkpoint: resume from the last one;
    anything else, or `force`: run from the start.
    """

    def same(record: dict[str, Any] | None) -> bool:
        return bool(record) and record.get("config_hash") == config_hash and record.get("inputs") == inputs

    if force:
        return Run()
    if same(facts.done) and facts.done.get("status") == "done":
        return Skip(facts.done)
    for folder, record in facts.elsewhere:
        if same(record) and record.get("status") == "done":
            return Share(folder, record)
    if same(facts.plan) and facts.checkpoints:
        return Resume(facts.checkpoints[-1])
    return Run()


def read_stage_facts(run_dir: Path, name: str, *, reuse: list[Path] | tuple[Path, ...] = ()) -> StageFacts:
    """What `decide` needs about stage `name`, read from `run_dir` and the runs in `reuse`."""
    work = run_dir / ".work" / name
    return StageFacts(
        done=finished_record(run_dir, name),
        elsewhere=[(Path(run) / name, read_json(Path(run) / name / "stage.json")) for run in reuse],
        plan=read_json(work / "plan.json"),
        checkpoints=[str(c) for c in complete_checkpoints(work / "checkpoints")],
    )


def finished_record(run_dir: Path, name: str) -> dict[str, Any] | None:
    """The stage.json of stage `name`'s finished artifact in `run_dir`, or None."""
    record = read_json(run_dir / name / "stage.json")
    return record if record and record.get("status") == "done" else None


def selected_stages(names: list[str], *, only: str | None, from_stage: str | None) -> set[str]:
    """The stages `--only` / `--from` select (all without them)."""
    for flag, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    if only is not None:
        return {only}
    if from_stage is not None:
        return set(names[names.index(from_stage) :])
    return set(names)


# ---------------------------------------------------------------------------------------------
# Acting on it
# ---------------------------------------------------------------------------------------------


def _run_stages(
    pipeline: PipelineSpec,
    *,
    run_dir: Path | None,
    only: str | None,
    from_stage: str | None,
    force: bool,
    launch: str | None,
    console: Any,
    reuse: list[Path] | tuple[Path, ...],
    world: World | None,
    strict: bool = False,
) -> list[StageOutcome]:
    """run_pipeline's walk over the stages; `world`: the outer launch's processes, or None."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 120)  # logs: no 80-column squeeze
    run_dir = Path(run_dir or Path("runs") / pipeline.name).resolve()
    (run_dir / ".work").mkdir(parents=True, exist_ok=True)
    with hold_run_folder(run_dir):  # one writer per run folder (rlft/runlock.py)
        return _walk_stages(
            pipeline,
            run_dir=run_dir,
            only=only,
            from_stage=from_stage,
            force=force,
            launch=launch,
            console=console,
            reuse=reuse,
            world=world,
            strict=strict,
        )


def _walk_stages(
    pipeline: PipelineSpec,
    *,
    run_dir: Path,
    only: str | None,
    from_stage: str | None,
    force: bool,
    launch: str | None,
    console: Any,
    reuse: list[Path] | tuple[Path, ...],
    world: World | None,
    strict: bool = False,
) -> list[StageOutcome]:
    """_run_stages' walk, with the run folder held."""
    _keep_pipeline_file(pipeline, run_dir)
    selected = selected_stages([s.name for s in pipeline.stages], only=only, from_stage=from_stage)

    run_id = uuid.uuid4().hex[:8]
    outcomes: list[StageOutcome] = []
    failed: StageOutcome | None = None
    for index, stage in enumerate(pipeline.stages):
        if stage.name not in selected or failed is not None:
            done = finished_record(run_dir, stage.name)
            outcomes.append(StageOutcome(stage.name, stage.kind, "kept" if done else "not run", done or {}))
            continue
        console.rule(f"[bold]stage {index + 1}/{len(pipeline.stages)}: {stage.name}[/] ({stage.kind})")
        model_paths, artifact_hashes = _finished(run_dir, outcomes)
        for key, ref in stage.references():
            if ref not in model_paths:
                raise ConfigError(
                    f"stages.{stage.name}.{key}.from: stage '{ref}' has no finished artifact in {run_dir}; "
                    f"run it first (rlft run {pipeline.label} --only {ref})"
                )
        stage_dirs = _finished_dirs(run_dir, outcomes)
        for key, ref, file in stage.data_references():
            if ref not in stage_dirs or not (Path(stage_dirs[ref]) / file).is_file():
                raise ConfigError(
                    f"stages.{stage.name}.{key}.from: stage '{ref}' has no finished {file} in {run_dir}; "
                    f"run it first (rlft run {pipeline.label} --only {ref})"
                )
        config_hash, inputs = stage_fingerprint(pipeline, stage, run_dir, model_paths, artifact_hashes)
        decision = decide(
            config_hash, inputs, read_stage_facts(run_dir, stage.name, reuse=reuse), force=force
        )
        plan = {
            "pipeline": pipeline.name,
            "run_id": run_id,
            "kind": stage.kind,
            "stage": stage.model_dump(mode="json", by_alias=True),
            "config_hash": config_hash,
            "inputs": inputs,
            "run_dir": str(run_dir),
            "base_dir": str(pipeline.base_dir),
            "model_paths": model_paths,
            "stage_dirs": stage_dirs,
            "evaluate": pipeline.config.evaluate.model_dump() if pipeline.config.evaluate else None,
            "tracking": pipeline.config.tracking.model_dump(),
            "resume_from": decision.checkpoint if isinstance(decision, Resume) else None,
            "strict": strict,  # too little disk space is an error (rlft/diskspace.py)
        }
        outcome = _act(decision, stage, plan, run_dir, launch=launch, base_dir=pipeline.base_dir, world=world)
        failed = outcome if outcome.status == "failed" else None
        outcomes.append(outcome)

    write_summary(run_dir, outcomes)
    print_summary(console, outcomes, run_dir)
    if pipeline.config.report:
        _write_report(run_dir, console)
    if failed is not None:
        error = failed.record.get("error") or "see its log"
        raise StageFailed(
            f"stage '{failed.name}' failed: {error}\n  log: {run_dir / '.work' / failed.name / 'stage.log'}"
        )
    return outcomes


def _write_report(run_dir: Path, console: Any) -> None:
    """report.html for the run; the stages are done and kept whatever happens here, so a failure is a warning."""
    from rlft.report import write_report

    try:
        console.print(f"report: {write_report([run_dir])}")
    except Exception as e:  # noqa: BLE001 - a plot that fails must not fail a finished run
        logger.warning(f"report not written ({type(e).__name__}: {e}); try `rlft report {run_dir}`")


def _act(
    decision: Decision,
    stage: StageBase,
    plan: dict[str, Any],
    run_dir: Path,
    *,
    launch: str | None,
    base_dir: Path,
    world: World | None,
) -> StageOutcome:
    """Carry out `decide`'s decision for a stage; `plan` is what its process is told when it runs."""
    match decision:
        case Skip(record):
            logger.info(f"skipped: {stage.name} is done with the same config and inputs (--force re-runs it)")
            return StageOutcome(stage.name, stage.kind, "skipped", record)
        case Share(folder, record):
            link_dir(folder, run_dir / stage.name)
            logger.info(
                f"shared: {stage.name} is done in {folder.parent} with the same config and inputs (hard-linked here)"
            )
            return StageOutcome(stage.name, stage.kind, "shared", record)
        case _:  # Resume or Run: plan["resume_from"] says which
            return _execute(stage, plan, run_dir, launch=launch, base_dir=base_dir, world=world)


def _keep_pipeline_file(pipeline: PipelineSpec, run_dir: Path) -> None:
    """runs/<pipeline>/pipeline.yaml: the file the run started from, comments and all; with `--set`
    overrides (or from a dict), the pipeline as run, as YAML, so that `rlft eval` reads the run's own
    `evaluate:` block."""
    if pipeline.source is not None and yamlio.safe_load(pipeline.source.read_text()) == pipeline.raw:
        shutil.copyfile(pipeline.source, run_dir / "pipeline.yaml")
        return
    header = f"# {pipeline.source} with --set overrides applied\n" if pipeline.source is not None else ""
    (run_dir / "pipeline.yaml").write_text(header + yaml.safe_dump(pipeline.raw, sort_keys=False))


def _execute(
    stage: StageBase,
    plan: dict[str, Any],
    run_dir: Path,
    *,
    launch: str | None,
    base_dir: Path,
    world: World | None,
) -> StageOutcome:
    """Run a stage as `plan` says (from the start, or from `plan["resume_from"]`) and collect its outcome."""
    work = run_dir / ".work" / stage.name
    if plan["resume_from"] is None and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work / "plan.json", plan)
    if plan["resume_from"]:
        logger.info(f"resuming: {stage.name} from {Path(plan['resume_from']).name} (an earlier run died)")
        for partial in sorted((work / "checkpoints").glob("checkpoint-*")):
            if partial.is_dir() and not is_complete_checkpoint(partial):  # a save the death cut short
                logger.info(f"{stage.name}: removing {partial.name}, written only in part")
                shutil.rmtree(partial, ignore_errors=True)
    server = stage_server.server() if world is None and not (launch or stage.launch) else None
    if server is not None:
        logger.debug(f"$ rlft.stages.runner {work}  # forked from the stage server (pid {server.proc.pid})")
        (work / "stage.log").write_text(f"# forked from the stage server: rlft.stages.runner {work}\n")
        try:
            code = _stream_forked(server, work)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(stage.name, work)) from None
    elif world is None:
        command = stage_command(launch or stage.launch, work, base_dir=base_dir)
        logger.debug(f"$ {' '.join(command)}")
        (work / "stage.log").write_text(f"$ {' '.join(command)}\n")
        try:
            code = _stream(command, work / "stage.log")
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(stage.name, work)) from None
    else:
        if launch or stage.launch:
            logger.warning(
                f"{stage.name}: launch {launch or stage.launch} ignored: rlft runs inside "
                f"an outer launch ({world.size} processes), which decides the processes"
            )
        (work / "stage.log").write_text(f"# in-process, on every rank of the outer launch ({world.size})\n")
        try:
            code = world.run_stage(work)
        except KeyboardInterrupt:
            raise Interrupted(interrupted_message(stage.name, work)) from None
    if code in (130, -2):  # it stopped on a Ctrl-C of its own (SIGINT sent to it alone, or in-process)
        raise Interrupted(interrupted_message(stage.name, work))
    record = read_json(run_dir / stage.name / "stage.json") if code == 0 else read_json(work / "stage.json")
    if not (code == 0 and record and record.get("status") == "done"):
        record = record or {}
        if not record.get("error"):  # it died before it could say why
            record = {**record, "error": died_message(code)}
        return StageOutcome(stage.name, stage.kind, "failed", record)
    shutil.copyfile(work / "stage.log", run_dir / stage.name / "stage.log")
    if (work / "ranks").is_dir():  # every process's summary (see rlft.stages.common.rank_summary)
        shutil.copytree(work / "ranks", run_dir / stage.name / "ranks", dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    for offline in sorted((run_dir / stage.name / "wandb").glob("offline-run-*")):
        # W&B printed its sync command with the work folder's path, gone now
        logger.info(f"{stage.name}: W&B offline run kept in {offline}; upload: wandb sync {offline}")
    return StageOutcome(stage.name, stage.kind, "ran", record)


def interrupted_message(name: str, work: Path) -> str:
    """What a stage stopped by Ctrl-C left: where the next run of the pipeline goes on from."""
    checkpoints = complete_checkpoints(work / "checkpoints")
    if checkpoints:
        return f"stage '{name}' stopped; running the pipeline again resumes it from {checkpoints[-1].name}"
    return f"stage '{name}' stopped before its first checkpoint; running the pipeline again starts it over"


def died_message(code: int) -> str:
    """Why a stage process that wrote no error ended: its exit code, or the signal that killed it."""
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"its process was killed by {name}{hint}; `rlft run` again resumes it from its last checkpoint"
    return f"exit code {code}"


def stage_fingerprint(
    pipeline: PipelineSpec, stage: StageBase, run_dir: Path, model_paths: dict, artifact_hashes: dict
) -> tuple[str, dict]:
    """(config hash, content hashes of the inputs): what decides whether a finished stage is still valid."""
    from rlft.models.loading import source_hash
    from rlft.rewards import RewardSpec

    evaluates = (
        pipeline.config.evaluate is not None and stage.uses_task_eval and getattr(stage, "evaluate", True)
    )
    hashed = {
        "stage": stage.hashed_config(),
        # the judge only serves `rlft eval`: adding one must not make finished stages stale
        "evaluate": pipeline.config.evaluate.model_dump(exclude={"judge"}) if evaluates else None,
    }
    inputs: dict[str, Any] = {}
    for key in type(stage).model_fields:
        value = getattr(stage, key)
        if isinstance(value, ModelSource):
            inputs[key] = source_hash(
                value,
                model_paths=model_paths,
                artifact_hashes=artifact_hashes,
                run_dir=run_dir,
                base_dir=pipeline.base_dir,
            )
        elif isinstance(value, RewardSpec):  # `reward:` of PPO/GRPO/RLOO: reward artifacts and files
            inputs[key] = _reward_inputs(value, artifact_hashes=artifact_hashes, base_dir=pipeline.base_dir)
    sections = stage.data_sections()
    if sections:
        read = [
            [
                s.model_dump(mode="json")
                for s in as_sources(d.train) + as_sources(d.eval)
                if s.path is not None
            ]
            for d in sections.values()
        ] + list(stage.input_files().values())
        inputs["data"] = {p: hash_path(Path(p)) for p in _local_paths(read, pipeline.base_dir)}
        for _, ref, file in stage.data_references():  # an earlier stage's output: its content
            path = run_dir / ref / file
            inputs["data"][f"from:{ref}/{file}"] = hash_path(path) if path.is_file() else "missing"
    if evaluates:
        inputs["evaluate"] = {
            p: hash_path(Path(p))
            for p in _local_paths(
                [pipeline.config.evaluate.prompts, pipeline.config.evaluate.reward.split(":")[0]],
                pipeline.base_dir,
            )
        }
    return hash_json(hashed), inputs


def _reward_inputs(spec: Any, *, artifact_hashes: dict, base_dir: Path) -> dict[str, str]:
    """Content hashes of what a `reward:` block reads: stage artifacts (`from`), model folders
    (`path`) and reward files (`file.py:fn`); an installed module's function is not hashed."""
    inputs: dict[str, str] = {}
    for entry in spec.sum or [spec]:
        if entry.from_ is not None:
            inputs[f"from:{entry.from_}"] = artifact_hashes.get(entry.from_, "missing")
        for p in _local_paths([entry.path or (entry.function or "").split(":")[0]], base_dir):
            inputs[p] = hash_path(Path(p))
    return inputs


def _local_paths(value: Any, base_dir: Path) -> list[str]:
    """Every string in a config value that names an existing local file, folder or glob of files."""
    found: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            found += _local_paths(v, base_dir)
    elif isinstance(value, list):
        for v in value:
            found += _local_paths(v, base_dir)
    elif isinstance(value, str) and value:
        p = Path(value).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if p.exists():
            found.append(str(p.resolve()))
        elif any(c in value for c in "*?["):
            found += sorted(str(Path(m).resolve()) for m in glob.glob(str(p), recursive=True))
    return found


def _finished(run_dir: Path, outcomes: list[StageOutcome]) -> tuple[dict[str, str], dict[str, str]]:
    """Artifact folder and artifact hash of every earlier stage that has a finished model."""
    paths, hashes = {}, {}
    for o in outcomes:
        if o.record.get("status") == "done" and o.record.get("has_model", True):
            paths[o.name] = str(run_dir / o.name)
            hashes[o.name] = o.record.get("artifact_hash") or "unknown"
    return paths, hashes


def _finished_dirs(run_dir: Path, outcomes: list[StageOutcome]) -> dict[str, str]:
    """The folder of every earlier stage that finished (with a model or not), for `{from: STAGE}` data."""
    return {o.name: str(run_dir / o.name) for o in outcomes if o.record.get("status") == "done"}


def stage_command(launch: str | None, work: Path, *, base_dir: Path) -> list[str]:
    runner = ["-m", "rlft.stages.runner", str(work)]
    if launch is None:
        return [sys.executable, *runner]
    config = resolved_launch_config(find_launch_config(launch, base_dir=base_dir), work / "launch.yaml")
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which(
        "accelerate"
    )
    if accelerate is None:
        raise ConfigError("launch: the `accelerate` command is not installed in this environment")
    return [accelerate, "launch", "--config_file", str(config), *runner]


def _copy_output(fd: int, log_path: Path) -> None:
    """Copy a stage's output (progress bars included) to the terminal and its log, until it closes."""
    with open(log_path, "ab") as log:
        out = getattr(sys.stdout, "buffer", None)
        while chunk := os.read(fd, 65536):
            if out is not None:
                out.write(chunk)
            else:  # a text-only stdout (some test or notebook captures)
                sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
            log.write(chunk)
            log.flush()  # in order with the lines the stage writes into the log itself (rlft.log.stage_log)


def _stream(command: list[str], log_path: Path) -> int:
    """Run a stage's process, copying its output to the terminal and a log.

    The child stays in our process group, so Ctrl-C (or killing the group) reaches it too.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        _copy_output(proc.stdout.fileno(), log_path)
        return proc.wait()
    except KeyboardInterrupt:
        stop_child(proc)
        raise


def _stream_forked(server: stage_server.StageServer, work: Path) -> int:
    """`_stream` for a stage process forked from the stage server (in our process group too)."""
    read_end, write_end = os.pipe()
    try:
        pid = server.run(work, write_end)
    finally:
        os.close(write_end)
    try:
        _copy_output(read_end, work / "stage.log")
        return server.wait()
    except KeyboardInterrupt:
        stop_pid(pid)
        raise
    finally:
        os.close(read_end)


def summary_entries(outcomes: list[StageOutcome]) -> list[dict[str, Any]]:
    entries = []
    for o in outcomes:
        metrics = o.record.get("metrics") or {}
        entries.append(
            {
                "stage": o.name,
                "kind": o.kind,
                "status": o.status,
                "seconds": o.record.get("seconds"),
                "task_reward": metrics.get("task_reward"),
                **{k: v for k, v in metrics.items() if k != "task_reward"},
            }
        )
    return entries


def write_summary(run_dir: Path, outcomes: list[StageOutcome]) -> None:
    write_json_atomic(run_dir / "summary.json", summary_entries(outcomes))


def _task_reward_cell(entry: dict[str, Any]) -> str:
    """The stage's task reward, or a multitask stage's reward per task (`upper 1.000, reverse 0.995`)."""
    if entry["task_reward"] is not None:
        return f"{entry['task_reward']:.3f}"
    per_task = [
        f"{key.split('/')[1]} {value:.3f}"
        for key, value in entry.items()
        if key.startswith("task/") and key.endswith("/reward") and isinstance(value, float)
    ]
    return ", ".join(per_task) or "-"


def print_summary(console: Any, outcomes: list[StageOutcome], run_dir: Path) -> None:
    from rich.table import Table

    entries = summary_entries(outcomes)
    columns = {"reward_accuracy": "RM acc", "train/loss": "train loss", "eval/loss": "eval loss", "kl": "KL"}
    extra = [k for k in columns if any(k in e for e in entries)]
    table = Table(title=f"rlft summary: {run_dir}", title_justify="left")
    for col in ("stage", "kind", "status", "seconds", "task reward", *(columns[k] for k in extra)):
        table.add_column(col, justify="left" if col in ("stage", "kind", "status") else "right", no_wrap=True)
    colors = {"ran": "green", "skipped": "cyan", "shared": "cyan", "failed": "red"}
    for e in entries:
        status = e["status"]
        table.add_row(
            e["stage"],
            e["kind"],
            f"[{colors.get(status, 'dim')}]{status}[/]",
            f"{e['seconds']:.1f}" if e["seconds"] is not None else "-",
            _task_reward_cell(e),
            *(f"{e[k]:.4f}" if isinstance(e.get(k), float) else "-" for k in extra),
        )
    console.print(table)
    console.print(f"summary: {run_dir / 'summary.json'}")
