"""`accelerate launch ... -m rlft run PIPELINE`: the pipeline inside a launch that already exists.

Normally `rlft run` starts each stage as its own child launch (rlft/pipeline.py). Started under
`accelerate launch` (or torchrun, or one launch per node from SLURM: launch/multinode/slurm.sh),
the processes already exist, so nothing is spawned:

    rank 0                                    every other rank
    plan the stage: skip? resume? plan.json
    send {"work": .work/<stage>}  ---------->  receive (waits here while rank 0 writes the files)
    run the stage in-process (runner.main)     run the stage in-process (runner.main)
    exit codes combined (all ranks) <------->  exit codes combined
    rename the artifact, summary.json          receive the next message ...
    send {"stop": exit code}      ---------->  return
    leave: barrier, process groups down <---->  leave

Rank 0 alone touches the run folder and decides what to skip; the others run exactly the stages
it sends, so they cannot disagree. The messages go over a gloo group of their own with a long
timeout: the other ranks may wait a while (rank 0 hashing a large model, or measuring the task
reward alone), and a rank that dies takes the launch down anyway (torchrun stops the others).
A stage's own `launch:` is ignored here: the outer launch decides the processes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from rlft.resources import shipped
from rlft.stages.runner import main as run_stage_here

MESSAGE_TIMEOUT = timedelta(hours=24)  # how long the other ranks wait for rank 0's next message


@dataclass
class World:
    """The processes of the outer launch, and the messages rank 0 sends them."""

    rank: int
    size: int
    group: Any = None  # the gloo group the messages go over (None with one process)

    @classmethod
    def join(cls) -> World:
        """Set up the process group (every rank must call this). On a machine without CUDA
        the group is gloo on the CPU, as the HF Trainer's `use_cpu` sets it up: the trainers
        of the stages then find it initialised and use it."""
        import torch
        import torch.distributed as dist
        from accelerate import PartialState

        _find_deepspeed_config()
        state = PartialState(cpu=not torch.cuda.is_available())
        if state.num_processes == 1:
            return cls(rank=0, size=1)
        group = dist.new_group(backend="gloo", timeout=MESSAGE_TIMEOUT)
        return cls(rank=state.process_index, size=state.num_processes, group=group)

    def send(self, message: dict[str, Any]) -> None:
        """Rank 0: one message to every other rank (they wait in `receive`)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.broadcast_object_list([message], src=0, group=self.group)

    def receive(self) -> dict[str, Any]:
        import torch.distributed as dist

        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def worst(self, code: int) -> int:
        """The highest exit code over all ranks (every rank must call this: it waits for all)."""
        if self.size == 1:
            return code
        import torch.distributed as dist

        codes: list[Any] = [None] * self.size
        dist.all_gather_object(codes, code, group=self.group)
        return max(codes)

    def run_stage(self, work: Path) -> int:
        """Rank 0: run the stage planned in `work` on every rank; its output also goes to work/stage.log."""
        self.send({"work": str(work)})
        with tee(work / "stage.log"):
            code = run_here(work)
        return self.worst(code)

    def leave(self) -> None:
        """Every rank, at the end: wait for the others, then take the process groups down. Left to
        the interpreter's exit, gloo's threads can abort the process ("terminate called without an
        active exception", seen when every stage was skipped)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier(group=self.group)
            dist.destroy_process_group()

    def follow(self) -> int:
        """Every rank but 0: run the stages rank 0 sends until it says stop; return its exit code."""
        while True:
            message = self.receive()
            if "work" not in message:
                return message["stop"]
            self.worst(run_here(Path(message["work"])))


def _find_deepspeed_config() -> None:
    """The shipped launch configs name their DeepSpeed JSON relative to themselves (`deepspeed/zero3.json`,
    as rlft's child launches resolve it), while accelerate passes the path on as written, to be read
    from the working folder. When it is not there, use the shipped file of that name."""
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if path and not Path(path).is_file() and shipped("launch", path).is_file():
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(shipped("launch", path))


def run_here(work: Path) -> int:
    """Run one stage in this process, as its child process would (rlft.stages.runner), then
    clear what it leaves behind that the next stage must not inherit."""
    try:
        return run_stage_here(str(work))
    except Exception:  # noqa: BLE001 - the runner reports stage errors itself; this is anything else
        traceback.print_exc()
        return 1
    finally:
        _clean_up()


def _clean_up() -> None:
    """Forget the finished stage's accelerate state (its DeepSpeed plugin, precision, gradient
    accumulation), keeping the process group; free its memory. A child process would just exit."""
    import torch
    from accelerate.state import AcceleratorState, GradientState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    AcceleratorState._reset_state(reset_partial_state=True)  # the group stays; the next PartialState finds it
    GradientState._reset_state()
    unset_hf_deepspeed_config()  # else the next stage's from_pretrained would partition its model (ZeRO-3)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # each stage's stage.json reports its own GPU peak


@contextlib.contextmanager
def tee(log_path: Path) -> Iterator[None]:
    """Copy this process's output (file descriptors 1 and 2, so also what libraries and C code
    write) into `log_path` while the block runs, as a child stage's output goes to its log."""
    sys.stdout.flush()
    sys.stderr.flush()
    terminal = os.dup(1), os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 1)
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        with open(log_path, "ab") as log:
            while chunk := os.read(read, 65536):
                with contextlib.suppress(OSError):
                    os.write(terminal[0], chunk)
                log.write(chunk)
                log.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(terminal[0], 1)  # the pipe's last write ends close: the pump reads to its end
        os.dup2(terminal[1], 2)
        # A process started during the stage (W&B's service) may hold the pipe open: then the pump
        # goes on in the background, into the same log, rather than keeping the pipeline waiting.
        thread.join(timeout=10)
        if not thread.is_alive():
            os.close(read)
            os.close(terminal[0])
        os.close(terminal[1])
