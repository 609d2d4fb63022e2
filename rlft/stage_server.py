"""A stage process that starts with torch, transformers and TRL already imported.

Every stage runs in a process of its own (a crash, a leak or a CUDA context never outlives its
stage), and each of those processes used to pay the imports again: `from trl import DPOTrainer`
alone takes 4.8 s on the 2-core CI machine, five times in the quickstart. `rlft run` now starts one
server process beside it, which imports those libraries and nothing else (no model, no tensor,
no thread pool started: only imports), then forks a child per stage. The child is a fresh stage
process in every way that matters: its own pid and memory, the run's environment and working
folder, stdout and stderr into the pipe the pipeline reads (the same as a `python -m
rlft.stages.runner` child's), exit code returned as a subprocess's would be.

Where a fork is not safe it is not used, and the stage starts as before (`python -m
rlft.stages.runner WORK`):
- a stage with a launch config (`accelerate launch`: several processes, DeepSpeed) is launched as before;
- not Linux (macOS frameworks are not fork-safe);
- a machine with an NVIDIA device (a CUDA context made before a fork cannot be used after it,
  and some libraries probe the device on import);
- `RLFT_STAGE_SERVER=0`.

The server imports while the pipeline checks its data and plans, so the first stage rarely waits.
Protocol (a Unix socket pair): the pipeline sends a JSON request (work folder, environment,
working folder) with the write end of a pipe attached (`socket.send_fds`); the server forks,
answers `{"pid": ...}`, waits for the child and answers `{"code": ...}`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlft.processes import stop_pid

logger = logging.getLogger(__name__)

PRELOAD = ("torch", "transformers", "datasets", "accelerate", "peft", "trl")
# What a stage process imports next, where installed (a missing one is imported by the stage, if at all):
# rlft's stages and evaluation, deepspeed (accelerate's and transformers' integrations reach it), the
# parts of wandb that `wandb.init` imports, matplotlib's Agg canvas (the data report's plot). Measured
# after PRELOAD, one thread, busy cores: about 2.5 s a stage, of which matplotlib 1.2, wandb 0.8, deepspeed 0.5.
PRELOAD_MORE = (
    "rlft.stages.runner",
    "rlft.stages.sft",
    "rlft.stages.reward",
    "rlft.stages.dpo",
    "rlft.stages.ppo",
    "rlft.stages.evaluate",
    "rlft.evaluation",
    "deepspeed",
    "wandb.apis.public",
    "wandb.sdk.launch",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)
_enabled = False
_server: StageServer | None = None


def usable() -> bool:
    """Whether a stage may be forked from the server here (see the module's docstring)."""
    if os.environ.get("RLFT_STAGE_SERVER", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    return not (Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists())


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """While inside, single-process stages start from the server (started on the first such stage)."""
    global _enabled, _server
    outer = _enabled
    _enabled = True
    try:
        yield
    finally:
        _enabled = outer
        if not outer and _server is not None:
            _server.close()
            _server = None


def server() -> StageServer | None:
    """The running server inside `serving()` where it is usable, else None (start the stage as before)."""
    global _server
    if not _enabled or not usable():
        return None
    if _server is None or _server.proc.poll() is not None:
        _server = StageServer.start()
    return _server


def _send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = (json.dumps(message) + "\n").encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


class _Lines:
    """JSON lines read from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock, self.buffer = sock, b""

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the stage server closed its socket")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


class StageServer:
    """The pipeline's side: start the server, run a stage through it, stop it."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket):
        self.proc, self.sock, self.lines = proc, sock, _Lines(sock)

    @classmethod
    def start(cls) -> StageServer:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlft.stage_server", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        logger.debug(f"stage server started (pid {proc.pid}): {', '.join(PRELOAD)} imported once")
        return cls(proc, ours)

    def run(self, work: Path, out_fd: int) -> int:
        """Fork a stage process for `work` writing its output to `out_fd`; returns its pid."""
        return self._fork({"work": str(work)}, out_fd)

    def call(self, target: str, kwargs: dict[str, Any], out_fd: int) -> int:
        """Fork a process running `target` ("module:function") with `kwargs` (JSON values), writing its
        output to `out_fd`; returns its pid. Its exit code: the function's int result, else 0."""
        return self._fork({"call": target, "kwargs": kwargs}, out_fd)

    def _fork(self, request: dict[str, Any], out_fd: int) -> int:
        request = {**request, "env": {**os.environ, "PYTHONUNBUFFERED": "1"}, "cwd": os.getcwd()}
        _send(self.sock, request, [out_fd])
        return self.lines.read()["pid"]

    def wait(self) -> int:
        """The exit code of the stage process last started (negative: the signal that killed it)."""
        return self.lines.read()["code"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------------------------------
# The server process: `python -m rlft.stage_server FD`
# ---------------------------------------------------------------------------------------------


def _child(request: dict[str, Any], out_fd: int, sock: socket.socket) -> None:
    """In the forked child: become the stage process, then exit with its code (never returns)."""
    code = 1
    try:
        sock.close()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C stops a stage as before
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if "call" in request:
            code = _call(request["call"], request["kwargs"])
        else:
            sys.argv = ["rlft.stages.runner", request["work"]]
            from rlft.stages.runner import main

            code = main(request["work"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001 - any failure: its traceback to the stage's log, exit 1
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _call(target: str, kwargs: dict[str, Any]) -> int:
    import importlib

    module, _, name = target.partition(":")
    result = getattr(importlib.import_module(module), name)(**kwargs)
    return result if isinstance(result, int) else 0


def call(target: str, **kwargs: Any) -> int:
    """Run `target` ("module:function", JSON-able keyword arguments) in a process forked from the server,
    its output straight to our stdout, and return its exit code (the function's int result, else 0); in
    this process when no server is usable (outside `serving()`, or no real stdout to hand over).

    For work after the stages that needs torch and transformers (rlft quickstart's evaluation): this
    process never imports them, the server already has."""
    srv = server()
    try:
        out_fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # a captured, file-less stdout
        srv = None
    if srv is None:
        return _call(target, kwargs)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = srv.call(target, kwargs, out_fd)
    try:
        return srv.wait()
    except KeyboardInterrupt:
        stop_pid(pid)
        raise


def serve(fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the stage handles Ctrl-C; the server ends with the socket
    sock = socket.socket(fileno=fd)
    for name in PRELOAD:
        __import__(name)
    import trl  # noqa: F401 - the trainers' modules themselves: what a stage imports first
    from trl import DPOTrainer, RewardTrainer, SFTTrainer  # noqa: F401

    for name in PRELOAD_MORE:
        with contextlib.suppress(ImportError):
            __import__(name)

    buffer, held = b"", []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        except OSError:
            return
        if not data:
            return
        buffer, held = buffer + data, held + list(fds)
        if b"\n" not in buffer:
            continue  # the rest of the request, its pipe already held
        line, buffer = buffer.split(b"\n", 1)
        request = json.loads(line)
        out_fd, held = held[0], held[1:]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, out_fd, sock)
        os.close(out_fd)
        try:
            _send(sock, {"pid": pid})
            _, status = os.waitpid(pid, 0)
            _send(sock, {"code": os.waitstatus_to_exitcode(status)})
        except OSError:  # the pipeline is gone (Ctrl-C): its stage has stopped or been stopped
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return


if __name__ == "__main__":
    serve(int(sys.argv[1]))
