"""The quickstart end to end, with its shipped config: each stage moves the task the right way."""

import json
from pathlib import Path

import pytest

from rlft.cli import main

pytestmark = pytest.mark.slow


def test_quickstart_improves_on_the_untrained_model(tmp_path, capsys):
    assert main(["quickstart", "--run-dir", str(tmp_path / "run")]) == 0
    summary = {e["stage"]: e for e in json.loads((tmp_path / "run" / "summary.json").read_text())}
    assert list(summary) == ["base", "sft", "reward", "dpo", "ppo"]
    assert all(e["status"] == "ran" and e["seconds"] > 0 for e in summary.values())
    assert summary["base"]["task_reward"] < 0.05
    assert summary["sft"]["task_reward"] > 0.3  # SFT learns the task, and the flaw of its demonstrations
    assert summary["sft"]["task_reward"] < 0.7
    assert summary["reward"]["reward_accuracy"] >= 0.95
    # DPO (+ NLL) from the SFT model on the preference pairs: +20 points at least (measured: 0.455 -> 1.0)
    assert summary["dpo"]["task_reward"] >= summary["sft"]["task_reward"] + 0.2
    assert summary["dpo"]["eval/rewards/accuracies"] >= 0.95
    assert (tmp_path / "run" / "cache" / "ref_logps").is_dir()  # reference log-probs computed once, cached
    # PPO from the SFT model (reward model + verifier): +20 points at least, final KL reported (measured: 1.0, 1.17)
    assert summary["ppo"]["task_reward"] >= summary["sft"]["task_reward"] + 0.2
    assert 0 < summary["ppo"]["kl"] < 10
    out = capsys.readouterr().out
    assert "quickstart task reward" in out and "base 0.0% -> sft" in out
    assert "-> dpo" in out and "-> ppo" in out and "stage 'ppo': final KL" in out
    for stage in ("sft", "reward", "dpo", "ppo"):
        assert (Path(tmp_path / "run" / stage) / "data_report.json").exists()
    # It ends with the evaluation table (rlft eval) and the report's path.
    assert "rlft eval" in out and f"report: {tmp_path / 'run' / 'report.html'}" in out
    rows = {r["stage"]: r for r in json.loads((tmp_path / "run" / "eval.json").read_text())}
    assert list(rows) == ["sft", "reward", "dpo", "ppo"]  # the reward model: a row of its own
    assert rows["reward"]["pair_accuracy"] >= 0.95 and "task_reward" not in rows["reward"]
    for stage in ("dpo", "ppo"):  # judged by the reward model against the SFT model they started from
        assert rows[stage]["baseline"] == "sft" and rows[stage]["judge"] == "reward model"
        assert rows[stage]["win_rate"] > 0.5 and rows[stage]["kl"] > 0
