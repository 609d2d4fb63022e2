"""rlft.stage_server: a stage forked from the server with the libraries imported runs as a
`python -m rlft.stages.runner` child does: same losses, its own process, its failures reported."""

import json
import os

import pytest

from rlft import stage_server
from rlft.pipeline import StageFailed, run_pipeline
from rlft.pipeline_file import load_pipeline


def losses(run_dir):
    lines = (run_dir / "sft" / "metrics.jsonl").read_text().splitlines()
    return [m["train/loss"] for m in map(json.loads, lines) if "train/loss" in m]


def test_a_forked_stage_trains_as_a_spawned_one(tmp_path, write_pipeline, monkeypatch):
    pipeline = load_pipeline(write_pipeline(sft_trainer="{max_steps: 4, logging_steps: 1}"))
    assert stage_server.usable()  # Linux, no NVIDIA device: CI and this machine

    forked = tmp_path / "forked"
    run_pipeline(pipeline, run_dir=forked)
    monkeypatch.setenv("RLFT_STAGE_SERVER", "0")
    assert not stage_server.usable()
    spawned = tmp_path / "spawned"
    run_pipeline(pipeline, run_dir=spawned)

    assert (forked / "sft" / "stage.log").read_text().startswith("# forked from the stage server")
    assert (spawned / "sft" / "stage.log").read_text().startswith("$ ")
    assert len(losses(forked)) == 4 and losses(forked) == losses(spawned)
    assert stage_server._server is None  # the server stops with the run


def test_the_server_forks_a_process_per_stage_and_returns_its_exit_code(tmp_path):
    work = tmp_path / "work"
    work.mkdir()  # no plan.json: the runner fails, as a spawned one would
    with stage_server.serving():
        server = stage_server.server()
        codes, pids = [], []
        for _ in range(2):
            read_end, write_end = os.pipe()
            pids.append(server.run(work, write_end))
            os.close(write_end)
            output = b""
            while chunk := os.read(read_end, 65536):
                output += chunk
            os.close(read_end)
            codes.append(server.wait())
        assert stage_server.server() is server  # one server for the run
    assert server.proc.poll() is not None  # stopped when the run ended
    assert len(set(pids)) == 2 and os.getpid() not in pids and server.proc.pid not in pids
    assert codes[0] == codes[1] != 0
    assert b"plan.json" in output or b"Traceback" in output or b"error" in output.lower()


def test_a_failing_stage_fails_the_run_the_same_way(tmp_path, write_pipeline, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n')  # no completion: no valid rows
    text = (
        write_pipeline()
        .read_text()
        .replace(
            str(pytest.importorskip("conftest").QUICKSTART_DATA) + "/sft_train.jsonl, max_rows: 64", str(bad)
        )
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    messages = []
    for server in ("1", "0"):
        monkeypatch.setenv("RLFT_STAGE_SERVER", server)
        with pytest.raises(StageFailed) as failed:
            run_pipeline(load_pipeline(path), run_dir=tmp_path / f"run{server}")
        messages.append(str(failed.value).replace(f"run{server}", "run"))
    assert messages[0] == messages[1]


def test_call_runs_a_function_in_a_forked_process_with_our_stdout(capfd):
    """stage_server.call (rlft quickstart's evaluation): the function runs in a child of the server, writes
    to our stdout, and its int result is the exit code; outside serving() it runs here."""
    with stage_server.serving():
        server_pid = stage_server.server().proc.pid
        assert stage_server.call("builtins:print", end="printed by the child\n") == 0
        # os.getppid in the child is the server's pid; an exit code keeps its low 8 bits
        assert stage_server.call("os:getppid") == server_pid & 0xFF
    assert "printed by the child" in capfd.readouterr().out
    assert stage_server.call("os:getpid") == os.getpid()  # no server: called in this process
