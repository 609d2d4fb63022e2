"""Disk space (rlft/diskspace.py): the estimate against free space before training; ENOSPC during a save."""

import errno
import json
import logging
import shutil
from collections import namedtuple

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.diskspace import DiskSpaceError, check_free_space, checkpoints_kept, is_disk_full, write_estimate
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import runner

Usage = namedtuple("Usage", "total used free")


def test_checkpoints_kept_counts_the_one_written_before_the_oldest_goes():
    assert checkpoints_kept(steps=1000, save_steps=100, save_total_limit=2) == 3
    assert checkpoints_kept(steps=150, save_steps=100, save_total_limit=2) == 1
    assert checkpoints_kept(steps=1000, save_steps=100, save_total_limit=None) == 10
    assert checkpoints_kept(steps=1000, save_steps=None, save_total_limit=2) == 0


def test_the_estimate_is_checkpoints_of_model_and_adam_state_plus_the_model():
    model = torch.nn.Linear(10, 10)  # 110 fp32 parameters: 440 bytes
    model.bias.requires_grad_(False)  # 100 trainable: 800 bytes of Adam state
    assert write_estimate(model, checkpoints=3) == 3 * (440 + 800) + 440


def test_too_little_free_space_warns_or_fails_under_strict(tmp_path, monkeypatch, caplog, rlft_logger):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 5 * 2**20, 5 * 2**20))
    rlft_logger.propagate = True
    with caplog.at_level(logging.WARNING, logger="rlft.diskspace"):
        check_free_space(tmp_path, 2**30, stage="sft", checkpoints=3, strict=False)
    assert (
        "stages.sft: will write about 1.0 GiB (3 checkpoints" in caplog.text
        and "only 5.0 MiB is free" in caplog.text
    )
    with pytest.raises(DiskSpaceError, match="only 5.0 MiB is free there.*without --strict"):
        check_free_space(tmp_path, 2**30, stage="sft", checkpoints=3, strict=True)
    check_free_space(tmp_path, 2**20, stage="sft", checkpoints=3, strict=True)  # fits: nothing said


def test_enospc_is_recognised_through_wrapping_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise RuntimeError("safetensors: I/O error") from e
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_disk_full_during_a_checkpoint_save_keeps_the_last_complete_one(tmp_path, monkeypatch):
    """Under --strict a stage without the room for its checkpoints fails before training. A stage whose
    save of checkpoint-4 hits ENOSPC fails with a clear message; checkpoint-2 stays (complete,
    resumable), the half-written checkpoint-4 is removed, and no artifact is moved in."""
    from transformers import Trainer

    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    model = build_tiny_from_texts(texts, tmp_path / "model", hidden_size=32, num_layers=2, num_heads=2)
    run_dir, work = tmp_path / "run", tmp_path / "run" / ".work" / "sft"
    work.mkdir(parents=True)
    stage = {
        "name": "sft",
        "kind": "sft",
        "model": {"path": str(model)},
        "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 32},
        "trainer": {"max_steps": 5, "save_steps": 2, "per_device_train_batch_size": 4},
    }
    plan = {
        "pipeline": "d",
        "run_id": "x",
        "kind": "sft",
        "stage": stage,
        "config_hash": "h",
        "inputs": {},
        "run_dir": str(run_dir),
        "base_dir": str(tmp_path),
        "model_paths": {},
        "evaluate": None,
        "tracking": {"wandb": "disabled"},
        "resume_from": None,
    }
    (work / "plan.json").write_text(json.dumps({**plan, "strict": True}))
    with monkeypatch.context() as m:
        m.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
        assert runner.main(str(work)) == 2
    error = json.loads((work / "stage.json").read_text())["error"]
    assert error.startswith("stages.sft: will write about") and "only 1000 B is free" in error
    assert not list((work / "checkpoints").glob("checkpoint-*"))  # stopped before the first step

    (work / "plan.json").write_text(json.dumps(plan))
    save = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if output_dir.endswith("checkpoint-4"):
            raise OSError(errno.ENOSPC, "No space left on device")
        save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    assert runner.main(str(work)) == 2
    record = json.loads((work / "stage.json").read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith(
        f"disk full while saving checkpoint-4 in {work / 'checkpoints'}: free space "
    )
    checkpoints = sorted(p.name for p in (work / "checkpoints").glob("checkpoint-*"))
    assert (
        checkpoints == ["checkpoint-2"]
        and (work / "checkpoints" / "checkpoint-2" / "trainer_state.json").exists()
    )
    assert not (run_dir / "sft").exists()
