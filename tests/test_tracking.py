"""Metrics: namespaced names, metrics.jsonl always written, W&B never hangs on the network."""

import os
import subprocess
import sys
import textwrap

import pytest

from rlft.config import TrackingConfig
from rlft.tracking import Tracker, namespaced, read_metrics


def test_trainer_keys_are_namespaced():
    logs = {"loss": 1.5, "eval_loss": 2.0, "train_loss": 1.7, "train_runtime": 3.0, "epoch": 1.0, "note": "x"}
    logs |= {"rewards/margins": 0.5, "eval_rewards/margins": 0.25}  # TRL's own names keep their namespace
    assert namespaced(logs) == {
        "train/loss": 1.5,
        "eval/loss": 2.0,
        "rewards/margins": 0.5,
        "eval/rewards/margins": 0.25,
        "train/mean_loss": 1.7,
        "train/runtime": 3.0,
        "train/epoch": 1.0,
    }


def test_metrics_jsonl_only_on_main_process(tmp_path):
    main, other = Tracker(tmp_path / "a.jsonl"), Tracker(tmp_path / "b.jsonl", main_process=False)
    for t in (main, other):
        t.log({"train/loss": 1.0}, step=1)
        t.log({"train/loss": 0.5}, step=2)
    assert [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path / "a.jsonl")] == [(1, 1.0), (2, 0.5)]
    assert not (tmp_path / "b.jsonl").exists()
    assert main.last == {"train/loss": 0.5}


def _start(tmp_path, env: dict, cfg: TrackingConfig) -> str:
    """Open a W&B run in a fresh process (W&B keeps global state) and return the mode it used."""
    code = textwrap.dedent(
        f"""
        from rlft.config import TrackingConfig
        from rlft.tracking import Tracker
        t = Tracker({str(tmp_path / "m.jsonl")!r})
        mode = t.start_wandb(TrackingConfig.model_validate({cfg.model_dump()!r}), pipeline="p", run_id="r", stage="s", kind="sft", config={{}})
        t.log({{"train/loss": 1.0}}, step=1)
        t.finish({{"done": 1}})
        print("MODE", mode)
        """
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("MODE "))


@pytest.mark.slow
def test_no_api_key_logs_offline(tmp_path):
    assert _start(tmp_path, {}, TrackingConfig()) == "offline"
    assert list(tmp_path.glob("wandb/offline-run-*"))


@pytest.mark.slow
def test_key_without_reachable_server_falls_back_to_offline(tmp_path):
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens on port 9
    assert _start(tmp_path, env, TrackingConfig(init_timeout=5)) == "offline"


def test_disabled_opens_no_run(tmp_path):
    t = Tracker(tmp_path / "m.jsonl")
    assert (
        t.start_wandb(
            TrackingConfig(wandb="disabled"), pipeline="p", run_id="r", stage="s", kind="k", config={}
        )
        == "disabled"
    )
    assert t.wandb_run is None
