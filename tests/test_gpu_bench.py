"""benchmarks/gpu_bench.py: its FLOPs formula, its table, and its dry run end to end (CPU, tiny shapes)."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_bench.py"
spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
gpu_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_bench)

MODEL = {"matmul_parameters": 1000, "layers": 2, "hidden": 8, "tied": True}


def test_flops_per_token_palm_formula():
    # 6N + 12 L d T for training; DPO adds the reference forward, 2N + 4 L d T
    assert gpu_bench.flops_per_token("sft", MODEL, 10) == 6 * 1000 + 12 * 2 * 8 * 10
    assert gpu_bench.flops_per_token("dpo", MODEL, 10) == 8 * 1000 + 16 * 2 * 8 * 10


def test_markdown_marks_what_did_not_run():
    result = {
        "date": "2026-12-01 00:00 UTC",
        "dry_run": False,
        "total_seconds": 300.0,
        "matmul": {
            "flops_per_second": 7.5e14,
            "dtype": "torch.bfloat16",
            "n": 8192,
            "gpu": "H200",
            "torch": "x",
        },
        "rows": [
            {"case": "SFT a", "status": "ok", "tokens_per_second": 12345.6, "mfu": 0.4123, "seconds": 30.2},
            {"case": "PPO a", "status": "timed out after 150 s", "seconds": 150.0},
        ],
    }
    lines = gpu_bench.markdown(result).splitlines()
    assert "H200" in lines[0] and "750.0 TFLOP/s" in lines[0]
    assert lines[4] == "| SFT a | ok | 12,346 | 41.2% | - | - | 30 |"
    assert lines[5] == "| PPO a | timed out after 150 s | - | - | - | - | 150 |"


@pytest.mark.slow
def test_dry_run_end_to_end(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--dry-run",
            "--out",
            str(out),
            "--budget",
            "900",
            "--step-timeout",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_bench.json").read_text())
    assert [r["status"] for r in result["rows"]] == ["ok"] * 6
    by_kind = {r["kind"]: r for r in result["rows"]}
    assert all(
        r["tokens_per_second"] > 0 and r["mfu"] > 0 for r in result["rows"] if r["kind"] in ("sft", "dpo")
    )
    assert by_kind["ppo"]["seconds_per_update"] > 0 and by_kind["grpo"]["seconds_per_update"] > 0
    assert result["models"]["llama05b"]["parameters"] > 0
    table = (out / "gpu_bench.md").read_text()
    assert table.count("\n| ") == 2 + 6  # header, separator, one row per case
