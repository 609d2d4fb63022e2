"""benchmarks/gpu_table.py: the table gpu_check.sh prints, from fake stage folders."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_table.py"
spec = importlib.util.spec_from_file_location("gpu_table", SCRIPT)
gpu_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_table)


def write_stage(run, name, kind, *, seconds, peak, rows, world_size=1):
    (run / name).mkdir(parents=True)
    record = {"stage": name, "kind": kind, "status": "done", "seconds": seconds, "world_size": world_size}
    (run / name / "stage.json").write_text(json.dumps({**record, "info": {"peak_memory": peak}}))
    (run / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "quickstart_bf16"
    sft_rows = [
        {"step": 50, "train/loss": 1.0, "train/num_tokens": 5000.0},
        {"step": 100, "train/loss": 0.5, "train/num_tokens": 10000.0},
        {"step": 120, "train/runtime": 4.0, "train/mean_loss": 0.7},  # 120 steps: 12,000 tokens in 4 s
    ]
    write_stage(
        run,
        "sft",
        "sft",
        seconds=6.5,
        peak={"rss_mib": 2048.4, "gpu_max_allocated_mib": 812.6},
        rows=sft_rows,
    )
    ppo_rows = [
        {"step": 1, "ppo/episodes": 64, "ppo/response_length": 5.0, "perf/seconds_per_step": 0.5},
        {"step": 2, "ppo/episodes": 128, "ppo/response_length": 7.0, "perf/seconds_per_step": 0.3},
    ]  # (64 x 5 + 64 x 7) tokens in 0.8 s
    write_stage(run, "ppo", "ppo", seconds=12.25, peak={"rss_mib": 1500.0}, rows=ppo_rows, world_size=2)
    write_stage(run, "base", "evaluate", seconds=1.0, peak={"rss_mib": 900.0}, rows=[])
    summary = [
        {"stage": "base", "status": "skipped"},  # not run in this run: left out
        {"stage": "sft", "status": "ran"},
        {"stage": "ppo", "status": "ran"},
    ]
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_table_lists_the_stages_that_ran_with_throughput_and_memory(run):
    assert gpu_table.markdown_table(gpu_table.stage_rows(run)).splitlines() == [
        "| run | stage | kind | procs | seconds | tokens/s | peak GPU MiB | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        "| quickstart_bf16 | sft | sft | 1 | 6.5 | 3,000 | 813 | 2,048 |",
        "| quickstart_bf16 | ppo | ppo | 2 | 12.2 | 960 | - | 1,500 |",
    ]


def test_without_summary_every_finished_stage_in_start_order(run):
    (run / "summary.json").unlink()
    for i, name in enumerate(["base", "sft", "ppo"]):
        record = json.loads((run / name / "stage.json").read_text())
        (run / name / "stage.json").write_text(json.dumps({**record, "started": i}))
    assert [r["stage"] for r in gpu_table.stage_rows(run)] == ["base", "sft", "ppo"]
    assert gpu_table.stage_rows(run)[0]["tokens/s"] is None


def test_logged_tokens_per_second_wins():
    rows = [{"step": 1, "perf/tokens_per_second": 100.0}, {"step": 2, "perf/tokens_per_second": 300.0}]
    assert (
        gpu_table.tokens_per_second(rows + [{"step": 2, "train/num_tokens": 9.0, "train/runtime": 1.0}])
        == 200.0
    )


def test_command_line(run, tmp_path):
    ok = subprocess.run([sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "| quickstart_bf16 | sft |" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no such run folder" in bad.stderr
