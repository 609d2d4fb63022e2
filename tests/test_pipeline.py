"""The pipeline runner end to end: artifacts, skipping, re-running on change, resuming a killed stage."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline

pytestmark = pytest.mark.slow


def stage_json(run_dir, stage):
    return json.loads((run_dir / stage / "stage.json").read_text())


def test_run_writes_artifacts_then_skips_then_reruns_on_change(tmp_path, write_pipeline, capsys):
    pipeline = write_pipeline(evaluate=True)
    run_dir = tmp_path / "run"
    assert main(["run", str(pipeline), "--run-dir", str(run_dir)]) == 0

    record = stage_json(run_dir, "sft")
    assert record["status"] == "done" and record["kind"] == "sft"
    assert record["inputs"]["model"].startswith("tiny:")
    assert all(len(h) == 64 for h in record["inputs"]["data"].values())  # sha256 of each data file
    assert {"torch", "transformers", "trl"} <= record["versions"].keys()
    assert record["seconds"] > 0 and record["info"]["parameters"]["trainable"] > 0
    given = record["info"]["trainer_settings"]  # what rlft gave SFTConfig: its merge, the stage's keys last
    assert given["max_steps"] == record["config"]["trainer"]["max_steps"] and given["use_cpu"] is True
    assert "output_dir" not in given
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "stage.log"):
        assert (run_dir / "sft" / name).exists(), name
    assert not (run_dir / ".work" / "sft").exists()  # work folder removed once the artifact is in place

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [e["stage"] for e in summary] == ["base", "sft"]
    assert all(0.0 <= e["task_reward"] <= 1.0 for e in summary)
    assert summary[1]["seconds"] > 0

    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    assert AutoTokenizer.from_pretrained(run_dir / "sft").chat_template

    # Same config and inputs: skipped, artifact untouched.
    mtime = (run_dir / "sft" / "stage.json").stat().st_mtime
    capsys.readouterr()
    assert main(["run", str(pipeline), "--run-dir", str(run_dir)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (run_dir / "sft" / "stage.json").stat().st_mtime == mtime
    assert [e["status"] for e in json.loads((run_dir / "summary.json").read_text())] == ["skipped", "skipped"]

    # A changed trainer value re-runs sft, not base.
    assert (
        main(
            [
                "run",
                str(pipeline),
                "--run-dir",
                str(run_dir),
                "--set",
                "stages.sft.trainer.learning_rate=0.01",
            ]
        )
        == 0
    )
    statuses = {e["stage"]: e["status"] for e in json.loads((run_dir / "summary.json").read_text())}
    assert statuses == {"base": "skipped", "sft": "ran"}
    assert stage_json(run_dir, "sft")["config"]["trainer"]["learning_rate"] == 0.01

    # --force re-runs even when done.
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--only", "sft", "--force"]) == 0
    assert "learning_rate" not in stage_json(run_dir, "sft")["config"]["trainer"]


def test_changed_data_reruns_the_stage(tmp_path):
    from conftest import QUICKSTART_DATA

    data = tmp_path / "train.jsonl"
    data.write_text("".join((QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines(keepends=True)[:32]))
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: d\nmodel: {{tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}}}\n"
        "stages:\n  - {name: sft, kind: sft, data: {train: train.jsonl}, trainer: {max_steps: 2}}\n"
    )
    run_dir = tmp_path / "run"
    first = run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert [o.status for o in first] == ["ran"]
    with open(data, "a") as f:
        row = {
            "prompt": [{"role": "user", "content": "shout: a b"}],
            "completion": [{"role": "assistant", "content": "A B"}],
        }
        f.write(json.dumps(row) + "\n")
    second = run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert [o.status for o in second] == ["ran"]
    assert stage_json(run_dir, "sft")["inputs"]["data"] != first[0].record["inputs"]["data"]
    assert stage_json(run_dir, "sft")["inputs"]["model"] == first[0].record["inputs"]["model"]


def test_killed_stage_resumes_from_its_last_complete_checkpoint(tmp_path, write_pipeline, capsys):
    """`rlft run` whose stage process dies by SIGKILL right after checkpoint-6 is complete (rlft/faults.py:
    deterministic, no sleeping). checkpoint-6's state file is then cut in half, as a kill while it was
    being written leaves it: the next `rlft run` resumes from checkpoint-3, the last complete one."""
    pipeline = write_pipeline(
        sft_trainer="{max_steps: 9, save_steps: 3, save_total_limit: 3, logging_steps: 1, per_device_train_batch_size: 2}"
    )
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "rlft", "run", str(pipeline), "--run-dir", str(run_dir)]
    env = {**os.environ, "RLFT_KILL_AFTER_CHECKPOINT": "6"}
    died = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert died.returncode == 2, died.stdout[-2000:] + died.stderr[-2000:]
    assert "stage 'sft' failed: its process was killed by SIGKILL" in died.stderr
    assert not (run_dir / "sft").exists()  # no artifact from a stage that died
    assert json.loads((run_dir / ".work" / "sft" / "stage.json").read_text())["status"] == "running"
    checkpoints = run_dir / ".work" / "sft" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    state = checkpoints / "checkpoint-6" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # killed while writing its state file, the last one written

    outcomes = run_pipeline(load_pipeline(pipeline), run_dir=run_dir)
    assert [o.status for o in outcomes] == ["ran"]
    record = stage_json(run_dir, "sft")
    assert record["resumed_from"].endswith("checkpoint-3")
    assert "written only in part" in capsys.readouterr().out  # the cut-short checkpoint-6, removed first
    assert record["metrics"]["train/global_step"] == 9
    records = map(json.loads, (run_dir / "sft" / "metrics.jsonl").read_text().splitlines())
    steps = [m["step"] for m in records if "train/loss" in m]
    # The first run logged steps 1-6; the second logs from just after checkpoint-3: 4-6 twice, 1-3 once.
    assert steps == [1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]


def test_failed_stage_reports_and_keeps_no_artifact(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "shout: a", "completion": "A"}\n{"prompt": "shout: b", "completion": ""}\n')
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: f\nmodel: {tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, tokenizer_texts: [bad.jsonl]}}\n"
        "stages:\n  - {name: sft, kind: sft, data: {train: bad.jsonl}, trainer: {max_steps: 2}}\n"
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "stage 'sft' failed" in err and "bad.jsonl (line 2): field 'completion' is empty" in err
    assert not (run_dir / "sft").exists()
    assert json.loads((run_dir / ".work" / "sft" / "stage.json").read_text())["status"] == "failed"
    assert json.loads((run_dir / "summary.json").read_text())[0]["status"] == "failed"


def test_only_needs_finished_upstream(tmp_path, write_pipeline):
    from conftest import QUICKSTART_DATA

    pipeline = write_pipeline(
        extra_stage=f"""
      - name: sft2
        kind: sft
        model: {{from: sft}}
        data: {{train: {QUICKSTART_DATA}/sft_train.jsonl}}
    """
    )
    with pytest.raises(ConfigError, match="stage 'sft' has no finished artifact"):
        run_pipeline(load_pipeline(pipeline), run_dir=tmp_path / "run", only="sft2")


def test_launch_config_runs_the_stage_under_accelerate(tmp_path, write_pipeline):
    text = (
        write_pipeline(sft_trainer="{max_steps: 2}")
        .read_text()
        .replace("stages:", "launch: launch/cpu.yaml\nstages:")
    )
    path = tmp_path / "launch.yaml"
    path.write_text(text)
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert stage_json(run_dir, "sft")["status"] == "done"
    first_line = (run_dir / "sft" / "stage.log").read_text().splitlines()[0]
    work = run_dir / ".work" / "sft"
    # The stage ran under `accelerate launch` with a resolved copy of launch/cpu.yaml.
    assert "accelerate launch --config_file" in first_line
    assert first_line.endswith(f"{work}/launch.yaml -m rlft.stages.runner {work}")
    assert stage_json(run_dir, "sft")["world_size"] == 1


def test_two_cpu_processes_train_one_model(tmp_path, write_pipeline):
    """launch/cpu_2proc.yaml really starts two processes (the `--cpu` trap starts one) that train together."""
    text = write_pipeline(
        sft_trainer="{max_steps: 4, logging_steps: 1, per_device_train_batch_size: 4}"
    ).read_text()
    path = tmp_path / "ddp.yaml"
    path.write_text(text.replace("stages:", "launch: cpu_2proc\nstages:"))
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path), run_dir=run_dir)
    record = stage_json(run_dir, "sft")
    assert record["status"] == "done" and record["world_size"] == 2
    ranks = [json.loads((run_dir / "sft" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert (
        len(ranks[0]["losses"]) == 4 and ranks[0]["losses"] == ranks[1]["losses"]
    )  # losses reduced across ranks
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # one model, kept in sync
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run_dir / "sft")  # saved once, complete


@pytest.mark.parametrize(
    "launch, tuning",
    [
        ("cpu_2proc_zero2", "{method: full}"),
        ("cpu_2proc_zero3", "{method: full}"),
        ("cpu_2proc_zero3", "{method: lora, r: 4}"),
    ],
)
def test_deepspeed_on_two_cpu_processes_saves_whole_weights(
    tmp_path, write_pipeline, launch, tuning, monkeypatch
):
    """ZeRO-2/3 over gloo: same losses and weights on both ranks, and the artifact holds the full weights
    (under ZeRO-3 each rank holds a shard: saving the local module would write empty tensors)."""
    from safetensors import safe_open

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    text = write_pipeline(
        sft_trainer="{max_steps: 3, logging_steps: 1, per_device_train_batch_size: 4}"
    ).read_text()
    path = tmp_path / "ds.yaml"
    path.write_text(
        text.replace("stages:", f"launch: {launch}\nstages:").replace(
            "kind: sft\n", f"kind: sft\n    tuning: {tuning}\n"
        )
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert stage_json(run_dir, "sft")["world_size"] == 2
    ranks = [json.loads((run_dir / "sft" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 3
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]
    with safe_open(str(run_dir / "sft" / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
    assert shapes["model.embed_tokens.weight"][1] == 32 and all(0 not in s for s in shapes.values())
    assert not any("lora" in k for k in shapes)  # adapters merged into whole weights


@pytest.mark.parametrize(
    "tuning",
    [
        "{method: freeze, last_n_blocks: 1, unfreeze_every: 2}",
        "{method: prompt_tuning, num_virtual_tokens: 4}",
    ],
    ids=["gradual-unfreezing", "prompt-tuning"],
)
def test_tuning_methods_keep_two_ddp_processes_in_step(tmp_path, write_pipeline, tuning):
    """Under DDP both ranks end with one model: parameters unfrozen mid-run (gradual unfreezing) are
    synchronised too, and a prompt-tuned model (rlft's forward on the PeftModel) trains through DDP."""
    text = write_pipeline(
        sft_trainer="{max_steps: 5, logging_steps: 1, per_device_train_batch_size: 4, learning_rate: 0.01}"
    ).read_text()
    path = tmp_path / "ddp.yaml"
    path.write_text(
        text.replace("stages:", "launch: cpu_2proc\nstages:").replace(
            "kind: sft\n", f"kind: sft\n    tuning: {tuning}\n"
        )
    )
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(path), run_dir=run_dir)
    assert stage_json(run_dir, "sft")["world_size"] == 2
    ranks = [json.loads((run_dir / "sft" / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["losses"] == ranks[1]["losses"] and len(ranks[0]["losses"]) == 5
    assert ranks[0]["param_checksum"] == ranks[1]["param_checksum"]  # the same weights on both ranks


def test_the_summary_table_shows_a_multitask_stages_reward_per_task():
    import io

    from rich.console import Console

    from rlft.pipeline import StageOutcome, print_summary

    metrics = {"task/upper/reward": 1.0, "task/reverse/reward": 0.995, "task/upper/share": 0.5}
    outcomes = [
        StageOutcome(
            name="joint", kind="multitask", status="ran", record={"seconds": 2.0, "metrics": metrics}
        ),
        StageOutcome(
            name="sft", kind="sft", status="ran", record={"seconds": 1.0, "metrics": {"task_reward": 0.5}}
        ),
    ]
    out = io.StringIO()
    print_summary(Console(file=out, width=200), outcomes, Path("runs/x"))
    rows = {line.split("│")[1].strip(): line for line in out.getvalue().splitlines() if line.count("│") > 3}
    assert "upper 1.000, reverse 0.995" in rows["joint"] and "0.500" in rows["sft"]


def test_ctrl_c_stops_the_run_and_its_stage_and_says_how_to_resume(tmp_path, write_pipeline):
    """SIGINT to the process group (what Ctrl-C in a terminal sends) once the stage trains: the stage
    process writes its status and exits, `rlft run` exits 130 with the command that goes on."""
    pipeline = write_pipeline(
        sft_trainer="{max_steps: 5000, save_steps: 2, logging_steps: 1, per_device_train_batch_size: 2}"
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlft", "run", str(pipeline), "--run-dir", str(run_dir), "--force"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    checkpoint = run_dir / ".work" / "sft" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    for _ in range(2400):  # 120 s at most
        if checkpoint.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: stage 'sft' stopped; running the pipeline again resumes it from checkpoint-" in err
    assert f"resume with: rlft run {pipeline} --run-dir {run_dir}\n" in err  # --force left out
    record = json.loads((run_dir / ".work" / "sft" / "stage.json").read_text())
    assert record["status"] == "interrupted"  # the stage process stopped cleanly, and wrote so
    with pytest.raises(ProcessLookupError):
        os.kill(record["pid"], 0)  # and is gone
    assert (run_dir / ".lock").read_text() == ""  # the run folder is free again


@pytest.mark.parametrize("how", ["child", "forked pid"])
def test_stop_after_ctrl_c_sends_sigint_then_kills(monkeypatch, how):
    """After an interrupt that was ours alone: a stage process that handles SIGINT stops on it; one that
    ignores SIGINT is killed once its second wait is over."""
    import subprocess
    import sys
    import time

    from rlft import processes

    monkeypatch.setattr(processes, "STOP_WAITS", (0.3, 1.0))
    handles = "import signal, sys, time; signal.signal(signal.SIGINT, lambda *a: sys.exit(7)); print('up', flush=True); time.sleep(60)"
    ignores = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    for code, expected in ((handles, 7), (ignores, -9)):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "up"  # the handler is in place
        started = time.monotonic()
        if how == "child":
            processes.stop_child(proc)
        else:
            processes.stop_pid(proc.pid)  # polls the pid: reap it from here, as the stage server would
            proc.wait(timeout=5)
        assert proc.returncode == expected
        assert time.monotonic() - started < 5
