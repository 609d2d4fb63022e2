"""Stopping a stage's process after Ctrl-C: wait for it, then SIGINT, then SIGKILL.

A terminal's Ctrl-C reaches the whole process group, so the stage usually stops on its own and
writes its status; when the interrupt was the pipeline's alone (a signal to `rlft run` only), the
stage is told with SIGINT, and killed when it does not stop either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable

STOP_WAITS = (5.0, 30.0)  # seconds a stage process gets to stop on its own, then after SIGINT


def stop(gone_within: Callable[[float], bool], send: Callable[[int], None]) -> None:
    """After Ctrl-C: let a stage process stop on its own (a terminal's Ctrl-C reaches it too), tell it
    (SIGINT) when the interrupt was ours alone, and kill it when it does not stop.

    gone_within(seconds) waits up to that long and says whether the process has ended; send(signal)
    signals it. Callers give these for their own kind of process (a child, or a forked pid).
    """
    for wait, sig in zip(STOP_WAITS, (signal.SIGINT, signal.SIGKILL), strict=True):
        if gone_within(wait):
            return
        send(sig)


def stop_child(proc: subprocess.Popen) -> None:
    """`stop` for our own child process (then reaped)."""

    def gone_within(seconds: float) -> bool:
        try:
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False

    stop(gone_within, proc.send_signal)
    proc.wait()


def stop_pid(pid: int) -> None:
    """`stop` for a forked stage process: not our child (the stage server's), so polled by pid."""

    def gone_within(seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.1)
        return False

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    stop(gone_within, send)
