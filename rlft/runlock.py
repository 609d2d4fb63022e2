"""One run folder, one writer: the lock `rlft run` (and each point of `rlft sweep`) holds on its run folder.

`runs/<pipeline>/.lock` is held with `fcntl.flock` on a file kept open for the whole run; inside it,
the holder's pid, host, start time and command, for the message a second run gets. The operating
system releases a flock when its process dies, however it dies (SIGKILL, the OOM killer), so a lock
left by a killed run is free again: the next run takes it over and says whose it was. Only the
top-level walk over the stages takes it; the stage processes it starts work inside the folder it holds.
The lock's file descriptor is not inherited by the stage processes (Python's default), so a stage
process that outlives a killed `rlft run` does not keep the folder locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlft.errors import RlftError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderBusy(RlftError):
    """Another rlft run holds the run folder."""


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'pid 123 on host h, started 2026-12-01 14:50:02 UTC (rlft run p.yaml)', from the lock file's content."""
    if not holder:
        return "a process that left no details"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started", 0)))
    command = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {started}{command}"


def _read_holder(file: Any) -> dict[str, Any] | None:
    file.seek(0)
    try:
        holder = json.loads(file.read() or "null")
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock while the block runs; raise RunFolderBusy at once when another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    file = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held open for the whole block
    try:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{run_dir} is in use by another rlft run: {describe_holder(_read_holder(file))}. "
                "Wait for it to end or stop it (Ctrl-C), or give this run another --run-dir"
            ) from None
        left = _read_holder(file)  # a clean end empties the file: details left mean that run died
        if left:
            logger.warning(
                f"taking over the lock of {run_dir} from {describe_holder(left)}, which is no longer running"
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(["rlft", *sys.argv[1:]]) if sys.argv else None,
        }
        file.seek(0)
        file.truncate()
        file.write(json.dumps(holder) + "\n")
        file.flush()
        try:
            yield
        finally:
            file.seek(0)
            file.truncate()
            file.flush()
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    finally:
        file.close()
