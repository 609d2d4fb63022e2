"""`accelerate launch -m rlft run ...`: the pipeline inside an outer launch (rlft/launched.py).

The stages run in-process on both ranks (no child launches); rank 0 alone writes the run folder.
Every run asserts that two processes really trained together (the `--cpu` trap starts one).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICKSTART_DATA

from rlft.distributed import outer_launch

REPO = Path(__file__).resolve().parent.parent


def accelerate_run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file launch/cpu_2proc.yaml -m rlft run ARGS` (two CPU processes)."""
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    command = [accelerate, "launch", "--config_file", str(REPO / "launch" / "cpu_2proc.yaml")]
    command += ["--main_process_port", "0"]  # a free port: other runs on this machine may hold 29500
    return subprocess.run(
        [*command, "-m", "rlft", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def write_sft_dpo(path: Path, *, sft_data: Path) -> Path:
    """SFT then DPO on a tiny model; `launch: cpu_2proc` is there to be ignored (the outer launch decides)."""
    path.write_text(
        f"""
name: outer
model:
  tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}
launch: cpu_2proc
stages:
  - name: sft
    kind: sft
    data: {{train: {sft_data}, max_rows: 64}}
    trainer: {{max_steps: 3, logging_steps: 1, per_device_train_batch_size: 4}}
  - name: dpo
    kind: dpo
    model: {{from: sft}}
    data: {{train: {QUICKSTART_DATA}/prefs_train.jsonl, max_rows: 32}}
    max_length: 64
    trainer: {{max_steps: 2, logging_steps: 1, per_device_train_batch_size: 4}}
"""
    )
    return path


def statuses(run_dir: Path) -> dict[str, str]:
    return {e["stage"]: e["status"] for e in json.loads((run_dir / "summary.json").read_text())}


@pytest.mark.slow
def test_pipeline_under_accelerate_launch_trains_on_two_ranks_and_skips_when_done(tmp_path):
    pipeline = write_sft_dpo(tmp_path / "p.yaml", sft_data=QUICKSTART_DATA / "sft_train.jsonl")
    run_dir = tmp_path / "run"

    # As launch/multinode/slurm.sh runs one stage: `... -m rlft run PIPELINE --only STAGE`.
    first = accelerate_run(str(pipeline), "--run-dir", str(run_dir), "--only", "sft", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "launch cpu_2proc ignored" in first.stdout, first.stdout[-3000:]
    assert statuses(run_dir) == {"sft": "ran", "dpo": "not run"}

    second = accelerate_run(str(pipeline), "--run-dir", str(run_dir), cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert statuses(run_dir) == {"sft": "skipped", "dpo": "ran"}, second.stdout[
        -3000:
    ]  # rank 1 did not train sft

    for stage, steps in (("sft", 3), ("dpo", 2)):
        record = json.loads((run_dir / stage / "stage.json").read_text())
        assert record["status"] == "done" and record["world_size"] == 2
        ranks = [json.loads((run_dir / stage / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert [r["rank"] for r in ranks] == [0, 1] and [r["world_size"] for r in ranks] == [2, 2]
        assert len(ranks[0]["losses"]) == steps and ranks[0]["losses"] == ranks[1]["losses"]
        assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # one model, kept in sync
        assert "[rlft] model:" in (run_dir / stage / "stage.log").read_text()  # rank 0's output, teed
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock",  # rank 0's hold on the run folder (rlft/runlock.py), emptied at its end
        ".work",
        "dpo",
        "models",
        "pipeline.yaml",
        "report.html",  # rank 0's report of the run (rlft.report), and its summary.md
        "sft",
        "summary.json",
        "summary.md",
    ]
    assert not list((run_dir / ".work").iterdir())  # each stage's work folder renamed away once
    assert (run_dir / ".lock").read_text() == ""

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "dpo")
    assert model.model.embed_tokens.weight.shape[1] == 32

    # The identical command again: every rank agrees there is nothing to do.
    mtime = (run_dir / "dpo" / "stage.json").stat().st_mtime
    third = accelerate_run(str(pipeline), "--run-dir", str(run_dir), cwd=tmp_path)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert statuses(run_dir) == {"sft": "skipped", "dpo": "skipped"}, third.stdout[-3000:]
    assert (run_dir / "dpo" / "stage.json").stat().st_mtime == mtime


@pytest.mark.slow
def test_a_failing_stage_under_accelerate_launch_stops_every_rank(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "shout: a", "completion": "A"}\n{"prompt": "shout: b", "completion": ""}\n')
    pipeline = write_sft_dpo(tmp_path / "p.yaml", sft_data=bad)
    run_dir = tmp_path / "run"
    result = accelerate_run(str(pipeline), "--run-dir", str(run_dir), cwd=tmp_path)  # no hang: timeout 300 s
    assert result.returncode != 0
    assert "stage 'sft' failed" in result.stderr and "field 'completion' is empty" in result.stderr
    assert statuses(run_dir) == {"sft": "failed", "dpo": "not run"}
    assert not (run_dir / "sft").exists()


def test_outer_launch_is_recognised_from_the_environment(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    assert not outer_launch()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not outer_launch()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # `accelerate launch` with one process
    assert outer_launch()
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun
    assert outer_launch()
