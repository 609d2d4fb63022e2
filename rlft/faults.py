"""Deterministic process deaths for tests of resuming: a stage process that kills itself at a named point.

A test sets one of these in the environment of `rlft run` (the stage processes inherit it):

    RLFT_KILL_AT_STEP=N              SIGKILL right after step N's first metrics reach metrics.jsonl (the step
                                     trained; a checkpoint due at N not yet written): a kill between checkpoints
    RLFT_KILL_AFTER_CHECKPOINT=N     SIGKILL right after checkpoint-N is complete (its state file written)
    RLFT_KILL_DURING_CHECKPOINT=N    SIGKILL while checkpoint-N is being written (weights saved, state not)

Optionally restricted to one stage: `RLFT_KILL_STAGE=NAME` (the stage's work folder name). SIGKILL,
not an exception: nothing runs after it (no `finally`, no atexit), as when the machine loses power or
the OOM killer strikes. Without these variables every function here does nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _kill_if(variable: str, step: int, folder: str | Path) -> None:
    wanted = os.environ.get(variable)
    if wanted is None or int(wanted) != step:
        return
    stage = os.environ.get("RLFT_KILL_STAGE")
    if stage is not None and stage not in Path(folder).resolve().parts:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def step_logged(step: int, metrics_path: str | Path) -> None:
    """Called by rlft.tracking.Tracker after it wrote metrics of `step` to `metrics_path`."""
    _kill_if("RLFT_KILL_AT_STEP", step, metrics_path)


def checkpoint_complete(step: int, folder: str | Path) -> None:
    """Called right after checkpoint `step` (in `folder`) is complete."""
    _kill_if("RLFT_KILL_AFTER_CHECKPOINT", step, folder)


def checkpoint_half_written(step: int, folder: str | Path) -> None:
    """Called inside the save of checkpoint `step`, after its weights and before its state file."""
    _kill_if("RLFT_KILL_DURING_CHECKPOINT", step, folder)
