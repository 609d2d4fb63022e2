"""The quickstart end to end, with its shipped config: each stage moves the task the right way."""

import json
from pathlib import Path

import pytest

from rlft.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_improves_on_the_untrained_model(tmp_path, capsys):
    assert main(["quickstart", "--run-dir", str(tmp_path / "run")]) == 0
    summary = {e["stage"]: e for e in json.loads((tmp_path / "run" / "summary.json").read_text())}
    assert list(summary) == ["base", "sft", "reward"]
    assert all(e["status"] == "ran" and e["seconds"] > 0 for e in summary.values())
    assert summary["base"]["task_reward"] < 0.05
    assert summary["sft"]["task_reward"] > 0.3  # SFT learns the task, and the flaw of its demonstrations
    assert summary["sft"]["task_reward"] < 0.7
    assert summary["reward"]["reward_accuracy"] >= 0.95
    out = capsys.readouterr().out
    assert "quickstart task reward" in out and "base 0.0% -> sft" in out
    for stage in ("sft", "reward"):
        assert (Path(tmp_path / "run" / stage) / "data_report.json").exists()
