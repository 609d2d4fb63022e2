"""One run folder, one writer: a second run stops at once naming the first; a killed run's lock is taken over."""

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline
from rlft.runlock import RunFolderBusy, hold_run_folder

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from rlft.runlock import hold_run_folder

    with hold_run_folder(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_a_second_run_stops_naming_the_first_and_a_dead_runs_lock_is_taken_over(
    tmp_path, write_pipeline, caplog, rlft_logger
):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RunFolderBusy, match=rf"in use by another rlft run: pid {holder.pid} on host \S+, started 20"
        ):
            with hold_run_folder(run_dir):
                pass
        # the whole pipeline stops before doing anything: no stage started, nothing written
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            run_pipeline(load_pipeline(write_pipeline()), run_dir=run_dir)
        assert not (run_dir / "pipeline.yaml").exists() and not list((run_dir / ".work").iterdir())
    finally:
        holder.kill()  # SIGKILL: it leaves its details in the lock file, the kernel frees the lock
        holder.wait()

    rlft_logger.propagate = True  # run_pipeline set up rlft's console handler; caplog listens at the root
    with caplog.at_level(logging.WARNING, logger="rlft.runlock"), hold_run_folder(run_dir):
        assert f'"pid": {os.getpid()}' in (run_dir / ".lock").read_text()
    assert f"taking over the lock of {run_dir} from pid {holder.pid} on host" in caplog.text
    assert "no longer running" in caplog.text
    assert (
        run_dir / ".lock"
    ).read_text() == ""  # a clean end leaves no details: the next run takes it quietly
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlft.runlock"), hold_run_folder(run_dir):
        pass
    assert "taking over" not in caplog.text
