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
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlft.artifacts import hash_json, hash_path, link_dir, write_json_atomic
from rlft.config import ModelSource, Pipeline
from rlft.errors import ConfigError, RlftError
from rlft.stages.common import read_json

REPO_ROOT = Path(__file__).resolve().parent.parent


class StageFailed(RlftError):
    """A stage's process exited with an error; its log says why."""


@dataclass
class StageOutcome:
    name: str
    kind: str
    status: str  # ran, skipped, shared (linked from another run), failed, kept, not run
    record: dict[str, Any] = field(default_factory=dict)  # the stage's stage.json


def run_pipeline(
    pipeline: Pipeline,
    *,
    run_dir: Path | None = None,
    only: str | None = None,
    from_stage: str | None = None,
    force: bool = False,
    launch: str | None = None,
    console: Any = None,
    reuse: list[Path] | tuple[Path, ...] = (),
) -> list[StageOutcome]:
    """Run the selected stages in order. Raises StageFailed when a stage fails (after the summary).

    `reuse`: run folders of other runs (earlier points of a sweep). A stage that must run here but
    is done there with the same config hash and input hashes is hard-linked from there instead
    (status "shared"): the same test that skips a finished stage, across folders.

    Under an outer `accelerate launch` (rlft/launched.py) rank 0 walks the stages and the other
    ranks run the ones it sends them; they return no outcomes.
    """
    from rlft.launch_rules import check_launch_rules
    from rlft.launched import World, outer_launch

    check_launch_rules(pipeline, launch=launch)  # known-bad stage x launch combinations, before any work
    options = dict(
        run_dir=run_dir,
        only=only,
        from_stage=from_stage,
        force=force,
        launch=launch,
        console=console,
        reuse=reuse,
    )
    if not outer_launch():
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


def _run_stages(
    pipeline: Pipeline,
    *,
    run_dir: Path | None,
    only: str | None,
    from_stage: str | None,
    force: bool,
    launch: str | None,
    console: Any,
    reuse: list[Path] | tuple[Path, ...],
    world: Any,
) -> list[StageOutcome]:
    """run_pipeline's walk over the stages; `world`: the outer launch's processes, or None."""
    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 120)  # logs: no 80-column squeeze
    run_dir = Path(run_dir or Path("runs") / pipeline.name).resolve()
    (run_dir / ".work").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pipeline.source, run_dir / "pipeline.yaml")
    names = [s.name for s in pipeline.stages]
    for flag, value in (("--only", only), ("--from", from_stage)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    if only is not None:
        selected = {only}
    elif from_stage is not None:
        selected = set(names[names.index(from_stage) :])
    else:
        selected = set(names)

    run_id = uuid.uuid4().hex[:8]
    outcomes: list[StageOutcome] = []
    failed: StageOutcome | None = None
    for index, stage in enumerate(pipeline.stages):
        done = read_json(run_dir / stage.name / "stage.json")
        done = done if done and done.get("status") == "done" else None
        if stage.name not in selected or failed is not None:
            outcomes.append(StageOutcome(stage.name, stage.kind, "kept" if done else "not run", done or {}))
            continue
        console.rule(f"[bold]stage {index + 1}/{len(pipeline.stages)}: {stage.name}[/] ({stage.kind})")
        model_paths, artifact_hashes = _finished(run_dir, outcomes)
        for key, ref in stage.references():
            if ref not in model_paths:
                raise ConfigError(
                    f"stages.{stage.name}.{key}.from: stage '{ref}' has no finished artifact in {run_dir}; "
                    f"run it first (rlft run {pipeline.source} --only {ref})"
                )
        config_hash, inputs = stage_fingerprint(pipeline, stage, run_dir, model_paths, artifact_hashes)
        if done and not force and done.get("config_hash") == config_hash and done.get("inputs") == inputs:
            console.print(
                f"[green]skipped[/]: {stage.name} is done with the same config and inputs (--force re-runs it)"
            )
            outcomes.append(StageOutcome(stage.name, stage.kind, "skipped", done))
            continue

        shared = None if force else _equal_artifact(reuse, stage.name, config_hash, inputs)
        if shared is not None:
            link_dir(shared, run_dir / stage.name)
            console.print(
                f"[cyan]shared[/]: {stage.name} is done in {shared.parent} with the same config and inputs "
                "(hard-linked here)"
            )
            outcomes.append(StageOutcome(stage.name, stage.kind, "shared", read_json(shared / "stage.json")))
            continue

        work = run_dir / ".work" / stage.name
        resume_from = _resume_point(work, config_hash, inputs, force=force)
        if resume_from is None and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
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
            "evaluate": pipeline.config.evaluate.model_dump() if pipeline.config.evaluate else None,
            "tracking": pipeline.config.tracking.model_dump(),
            "resume_from": resume_from,
        }
        write_json_atomic(work / "plan.json", plan)
        if resume_from:
            console.print(
                f"[yellow]resuming[/]: {stage.name} from {Path(resume_from).name} (an earlier run died)"
            )
        if world is None:
            command = stage_command(launch or stage.launch, work, base_dir=pipeline.base_dir)
            console.print(f"[dim]$ {' '.join(command)}[/]")
            (work / "stage.log").write_text(f"$ {' '.join(command)}\n")
            code = _stream(command, work / "stage.log")
        else:
            if launch or stage.launch:
                console.print(
                    f"[yellow]note[/]: {stage.name}: launch {launch or stage.launch} ignored: rlft runs inside "
                    f"an outer launch ({world.size} processes), which decides the processes"
                )
            (work / "stage.log").write_text(
                f"# in-process, on every rank of the outer launch ({world.size})\n"
            )
            code = world.run_stage(work)
        record = (
            read_json(run_dir / stage.name / "stage.json") if code == 0 else read_json(work / "stage.json")
        )
        if code == 0 and record and record.get("status") == "done":
            shutil.copyfile(work / "stage.log", run_dir / stage.name / "stage.log")
            if (work / "ranks").is_dir():  # every process's summary (see rlft.stages.common.rank_summary)
                shutil.copytree(work / "ranks", run_dir / stage.name / "ranks", dirs_exist_ok=True)
            shutil.rmtree(work, ignore_errors=True)
            for offline in sorted((run_dir / stage.name / "wandb").glob("offline-run-*")):
                # W&B printed its sync command with the work folder's path, gone now
                console.print(
                    f"{stage.name}: W&B offline run kept in {offline}; upload: wandb sync {offline}",
                    soft_wrap=True,
                )
            outcomes.append(StageOutcome(stage.name, stage.kind, "ran", record))
        else:
            failed = StageOutcome(stage.name, stage.kind, "failed", record or {"error": f"exit code {code}"})
            outcomes.append(failed)

    write_summary(run_dir, outcomes)
    print_summary(console, outcomes, run_dir)
    if failed is not None:
        error = failed.record.get("error") or "see its log"
        raise StageFailed(
            f"stage '{failed.name}' failed: {error}\n  log: {run_dir / '.work' / failed.name / 'stage.log'}"
        )
    return outcomes


def stage_fingerprint(
    pipeline: Pipeline, stage: Any, run_dir: Path, model_paths: dict, artifact_hashes: dict
) -> tuple[str, dict]:
    """(config hash, content hashes of the inputs): what decides whether a finished stage is still valid."""
    from rlft.models.loading import source_hash
    from rlft.rewards import RewardSpec

    evaluates = (
        pipeline.config.evaluate is not None and stage.uses_task_eval and getattr(stage, "evaluate", True)
    )
    hashed = {
        "stage": stage.hashed_config(),
        "evaluate": pipeline.config.evaluate.model_dump() if evaluates else None,
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
    data = getattr(stage, "data", None)
    if data is not None:
        inputs["data"] = {
            p: hash_path(Path(p)) for p in _local_paths(data.model_dump(mode="json"), pipeline.base_dir)
        }
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


def _equal_artifact(
    runs: list[Path] | tuple[Path, ...], name: str, config_hash: str, inputs: dict
) -> Path | None:
    """A finished artifact of stage `name` in one of `runs` with this config hash and these inputs."""
    for run in runs:
        record = read_json(Path(run) / name / "stage.json")
        if (
            record
            and record.get("status") == "done"
            and record.get("config_hash") == config_hash
            and record.get("inputs") == inputs
        ):
            return Path(run) / name
    return None


def _resume_point(work: Path, config_hash: str, inputs: dict, *, force: bool) -> str | None:
    """The last checkpoint of an earlier, unfinished run of this stage with the same config and inputs."""
    if force:
        return None
    plan = read_json(work / "plan.json")
    if not plan or plan.get("config_hash") != config_hash or plan.get("inputs") != inputs:
        return None
    checkpoints = sorted(
        (work / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
    )
    complete = [c for c in checkpoints if (c / "trainer_state.json").exists()]
    return str(complete[-1]) if complete else None


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


def find_launch_config(launch: str, *, base_dir: Path) -> Path:
    """A launch config: a shipped name (`zero3` -> launch/zero3.yaml), or a path relative to the
    pipeline file, the working folder, or rlft's checkout."""
    p = Path(launch).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        candidates = [base_dir / p, Path.cwd() / p, REPO_ROOT / p, REPO_ROOT / "launch" / p]
        if not p.suffix:
            candidates.append(REPO_ROOT / "launch" / f"{launch}.yaml")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    shipped = sorted(f.stem for f in (REPO_ROOT / "launch").glob("*.yaml"))
    raise ConfigError(
        f"launch: {launch}: no such accelerate config (shipped: {', '.join(shipped)}; or give a path)"
    )


def resolved_launch_config(config: Path, out: Path) -> Path:
    """A copy of the launch config with its DeepSpeed JSON path made absolute (it is relative to the config)."""
    import yaml

    data = yaml.safe_load(config.read_text()) or {}
    ds = data.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file") and not Path(ds["deepspeed_config_file"]).is_absolute():
        ds["deepspeed_config_file"] = str((config.parent / ds["deepspeed_config_file"]).resolve())
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def _stream(command: list[str], log_path: Path) -> int:
    """Run a stage's process, copying its output (progress bars included) to the terminal and a log.

    The child stays in our process group, so Ctrl-C (or killing the group) reaches it too.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        with open(log_path, "ab") as log:
            out = getattr(sys.stdout, "buffer", None)
            while chunk := os.read(proc.stdout.fileno(), 65536):
                if out is not None:
                    out.write(chunk)
                else:  # a text-only stdout (some test or notebook captures)
                    sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                log.write(chunk)
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


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
            f"{e['task_reward']:.3f}" if e["task_reward"] is not None else "-",
            *(f"{e[k]:.4f}" if isinstance(e.get(k), float) else "-" for k in extra),
        )
    console.print(table)
    console.print(f"summary: {run_dir / 'summary.json'}")
