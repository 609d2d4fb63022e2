"""Disk space: what a stage will write, against what is free; a full disk during a save, said plainly.

Before training, each stage estimates what it writes into its work folder: every checkpoint it keeps
at once (`save_total_limit`, plus the one being written before the oldest goes) holds the model and
the optimizer's state (Adam: two fp32 numbers per trainable parameter), and the finished artifact
holds the model once more. Less free space than that is a warning, or an error under
`rlft run --strict`. An estimate: LoRA checkpoints hold the adapter only, so it errs on the safe side.

A write that fails with ENOSPC (errno 28) during a save ends the stage with "disk full while saving
checkpoint-N in DIR: free space ...": the half-written checkpoint is removed (it could not be resumed
from), the complete ones before it and the finished stages' folders stay as they were.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

from rlft.artifacts import is_complete_checkpoint
from rlft.errors import RlftError

logger = logging.getLogger(__name__)

ADAM_BYTES_PER_TRAINABLE = 8  # exp_avg and exp_avg_sq, fp32


class DiskSpaceError(RlftError):
    """Not enough free disk space for what a stage writes (under --strict), or the disk filled during a save."""


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def checkpoints_kept(*, steps: int, save_steps: int | None, save_total_limit: int | None) -> int:
    """How many checkpoints a run of `steps` steps has on disk at most (one more than the limit while a
    new one is written and before the oldest is removed)."""
    if not save_steps or steps <= 0:
        return 0
    saved = steps // save_steps
    return min(saved, save_total_limit + 1) if save_total_limit else saved


def model_bytes(model: Any) -> tuple[int, int]:
    """(bytes of all parameters, number of trainable parameters)."""
    total, trainable = 0, 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def write_estimate(model: Any, *, checkpoints: int) -> int:
    """Bytes a stage training `model` writes: `checkpoints` x (model + Adam state) + the artifact's model."""
    weights, trainable = model_bytes(model)
    return checkpoints * (weights + ADAM_BYTES_PER_TRAINABLE * trainable) + weights


def check_free_space(folder: Path, needed: int, *, stage: str, checkpoints: int, strict: bool) -> None:
    """Warn (raise DiskSpaceError when `strict`) when `folder`'s file system has less than `needed` free."""
    free = shutil.disk_usage(folder).free
    if needed <= free:
        logger.debug(f"disk: about {human(needed)} to write, {human(free)} free in {folder}")
        return
    message = (
        f"stages.{stage}: will write about {human(needed)} ({checkpoints} checkpoints of model + optimizer "
        f"state, and the model) into {folder}, but only {human(free)} is free there; free some space, lower "
        "trainer.save_total_limit or save less often"
    )
    if strict:
        raise DiskSpaceError(message + " (or run without --strict to try anyway)")
    logger.warning(message)


def disk_full_message(checkpoint_dir: Path, artifact_dir: Path) -> str:
    """What a stage that hit ENOSPC says: which save failed, where, and how much is free there. The
    newest incomplete checkpoint is the one that was being written: it is removed."""
    partial = [
        p
        for p in Path(checkpoint_dir).glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and not is_complete_checkpoint(p)
    ]
    if partial:
        saving = max(partial, key=lambda p: int(p.name.split("-")[-1]))
        for p in partial:
            shutil.rmtree(p, ignore_errors=True)
        what, where = saving.name, saving.parent
    else:
        what, where = "the stage's model", artifact_dir
    free = shutil.disk_usage(where if where.exists() else where.parent).free
    return (
        f"disk full while saving {what} in {where}: free space {human(free)}. The complete checkpoints "
        "before it and the finished stages are kept; free some space and run again to resume"
    )


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, or one it was raised from, is ENOSPC (safetensors and torch re-raise it wrapped)."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False
