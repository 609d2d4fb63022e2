"""Metrics: always to ``metrics.jsonl``, to one W&B run per stage when W&B is available, and to a
TensorBoard event file when ``tracking.tensorboard`` is on.

W&B runs are grouped by pipeline run (``group``) with ``job_type`` = stage kind. With no API
key W&B runs offline; with a key but no reachable server, ``wandb.init`` would hang, so the wait
is bounded (``tracking.init_timeout``) and rlft falls back to offline. W&B's ``wandb/`` and the
``tensorboard/`` folder go to the tracker's ``log_dir`` (the stage folder, so that they outlive
the stage's work folder). Only the main process logs. Metric names are namespaced:
``train/loss``, ``eval/loss``, ``task/reward``, ...
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rlft import faults
from rlft.config import TrackingConfig
from rlft.errors import RlftError

logger = logging.getLogger(__name__)

NOT_MODEL = ("checkpoints", "wandb", "tensorboard")  # folders in a stage folder that are not the model
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def namespaced(logs: dict[str, Any]) -> dict[str, float]:
    """Map the trainer's log keys to rlft's names: `loss` -> `train/loss`, `eval_loss` -> `eval/loss`."""
    out = {}
    for key, value in logs.items():
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if key.startswith("eval_"):  # eval_loss, eval_rewards/margins -> eval/loss, eval/rewards/margins
            out[f"eval/{key[5:]}"] = value
        elif "/" in key:
            out[key] = value
        elif key == "train_loss":  # end-of-training summary: the mean over the run, not the last loss
            out["train/mean_loss"] = value
        elif key.startswith("train_"):  # train_runtime, train_samples_per_second, ...
            out[f"train/{key[6:]}"] = value
        else:
            out[f"train/{key}"] = value
    return out


class Tracker:
    """Writes metrics.jsonl on the main process, and mirrors each record to W&B and TensorBoard
    when they are open. `log_dir` receives `wandb/` and `tensorboard/` (default: beside metrics.jsonl)."""

    def __init__(self, metrics_path: Path, *, main_process: bool = True, log_dir: Path | None = None):
        self.metrics_path = Path(metrics_path)
        self.log_dir = Path(log_dir) if log_dir is not None else self.metrics_path.parent
        self.main_process = main_process
        self.wandb_run: Any = None
        self.tensorboard: Any = None  # torch.utils.tensorboard.SummaryWriter, when open
        self.model_artifact: str | None = None  # the W&B artifact name for the stage's model (log_model)
        self.last: dict[str, float] = {}  # latest value of every metric seen

    def start_wandb(
        self, cfg: TrackingConfig, *, pipeline: str, run_id: str, stage: str, kind: str, config: dict
    ) -> str:
        """Open the stage's trackers: the W&B run, and the TensorBoard writer when `cfg.tensorboard`.
        Returns the W&B mode used: online, offline or disabled."""
        if not self.main_process:
            return "disabled"
        if cfg.tensorboard:
            self.start_tensorboard()
        mode = os.environ.get("WANDB_MODE") or cfg.wandb
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "disabled":
            return mode
        import wandb

        self.model_artifact = f"{pipeline}-{stage}" if cfg.log_model else None

        kwargs = dict(
            project=cfg.project,
            entity=cfg.entity,
            group=f"{pipeline}-{run_id}",
            job_type=kind,
            name=f"{pipeline}/{stage}",
            tags=cfg.tags,
            config=config,
            dir=str(self.log_dir),
            reinit="finish_previous",
        )
        try:
            self.wandb_run = wandb.init(
                mode=mode, settings=wandb.Settings(init_timeout=cfg.init_timeout), **kwargs
            )
        except Exception as e:  # wandb raises its own error types on timeouts and auth failures
            if mode != "online":
                raise
            logger.warning(f"W&B online init failed ({type(e).__name__}: {e}); logging offline instead")
            mode = "offline"
            self.wandb_run = wandb.init(mode=mode, **kwargs)
        return mode

    def start_tensorboard(self) -> None:
        """Write every logged scalar to an event file in `<log_dir>/tensorboard/` too."""
        if not self.main_process or self.tensorboard is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # imports the `tensorboard` package
        except ImportError as e:
            raise RlftError(
                f"tracking.tensorboard: cannot write TensorBoard logs ({e}); "
                "`pip install tensorboard`, or set tracking.tensorboard: false"
            ) from None
        self.tensorboard = SummaryWriter(log_dir=str(self.log_dir / "tensorboard"))

    def log(self, metrics: dict[str, float], *, step: int) -> None:
        if not self.main_process or not metrics:
            return
        self.last.update(metrics)
        record = {"step": step, "time": round(time.time(), 3), **metrics}
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        faults.step_logged(step, self.metrics_path)  # a test may kill the stage here (rlft/faults.py)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, global_step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]], *, step: int) -> None:
        """A table of rows (e.g. sample generations): one JSON line per row in `<name>.jsonl` beside
        metrics.jsonl (`/` in the name becomes `_`), and a W&B Table when a run is open."""
        if not self.main_process or not rows:
            return
        path = self.metrics_path.parent / f"{name.replace('/', '_')}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}) + "\n")
        if self.wandb_run is not None:
            import wandb

            columns = list(rows[0])
            table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            self.wandb_run.log({name: table}, step=step)

    def finish(self, summary: dict[str, Any] | None = None, *, model_dir: Path | None = None) -> None:
        """Close the trackers; the W&B run gets `summary`, and `model_dir` as an artifact (`log_model`)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            for key, value in (summary or {}).items():
                self.wandb_run.summary[key] = value
            if model_dir is not None and self.model_artifact:
                self.wandb_run.log_artifact(self._model_artifact(Path(model_dir)))
            self.wandb_run.finish()
            self.wandb_run = None

    def _model_artifact(self, folder: Path) -> Any:
        """A W&B `model` artifact of a stage folder's files (not checkpoints, nor the trackers' logs).

        W&B copies the files into its staging area when they are added, so the folder may move
        (the pipeline renames it into place) before the run is synced.
        """
        import wandb

        artifact = wandb.Artifact(self.model_artifact, type="model")
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if path.is_file() and relative.parts[0] not in NOT_MODEL:
                artifact.add_file(str(path), name=relative.as_posix())
        return artifact


def trainer_callback(tracker: Tracker) -> Any:
    """A transformers TrainerCallback that forwards the trainer's logs to `tracker`.

    Adds `perf/tokens_per_second`: the growth of TRL's `num_tokens` (input tokens trained on, all
    processes) per second of wall time since the previous log (or the start of training); and
    `train/samples_seen`: training rows consumed by the optimizer steps so far, all processes, kept in
    each checkpoint's trainer_state.json and restored on resume (a resumed run must reach the same count
    as an uninterrupted one). After each checkpoint it calls rlft.faults (tests kill a stage there).
    """
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class RlftTracking(TrainerCallback, ExportableState):
        def __init__(self) -> None:
            self.mark: tuple[float, float | None] | None = None  # (time, num_tokens) at the last log
            self.samples_seen = 0

        def state(self) -> dict[str, Any]:  # saved into each checkpoint's trainer_state.json
            return {"args": {}, "attributes": {"samples_seen": self.samples_seen}}

        def on_train_begin(self, args, state, control, **kwargs):
            # a resumed run's token count is not known until its first log
            self.mark = (time.perf_counter(), 0.0 if state.global_step == 0 else None)
            saved = (getattr(state, "stateful_callbacks", None) or {}).get(type(self).__name__)
            if isinstance(saved, list):
                saved = saved[-1] if saved else None
            self.samples_seen = int(saved["attributes"]["samples_seen"]) if saved and state.global_step else 0

        def on_step_end(self, args, state, control, **kwargs):
            self.samples_seen += (
                args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            )

        def on_save(self, args, state, control, **kwargs):
            step = state.global_step
            faults.checkpoint_complete(step, Path(args.output_dir) / f"checkpoint-{step}")

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            metrics = namespaced(logs)
            tokens = logs.get("num_tokens")
            if isinstance(tokens, int | float) and self.mark is not None:
                now, (then, before) = time.perf_counter(), self.mark
                if before is not None and now > then and tokens > before:
                    metrics["perf/tokens_per_second"] = (tokens - before) / (now - then)
                self.mark = (now, float(tokens))
            if "loss" in logs:
                metrics["train/samples_seen"] = self.samples_seen
            tracker.log(metrics, step=state.global_step)

    return RlftTracking()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
