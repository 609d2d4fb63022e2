"""KTO on a tiny model: paired data unpaired by the data layer, the loss falls, the reference cache works."""

import json
import math
from pathlib import Path

import pytest
from conftest import QUICKSTART_DATA, stage_context

from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import kto
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def context(tmp_path: Path, name: str = "work") -> StageContext:
    work = tmp_path / name
    return stage_context(tmp_path, work)


def make(tiny_model: Path, data: dict, **overrides) -> kto.KTOStage:
    spec = {
        "name": "kto",
        "kind": "kto",
        "model": {"path": str(tiny_model)},
        "data": data,
        "max_length": 64,
        "trainer": {
            "max_steps": 30,
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "logging_steps": 3,
        },
        **overrides,
    }
    return kto.KTOStage.model_validate(spec)


def test_kto_on_paired_data_runs_and_its_loss_falls(tmp_path, tiny_model):
    cfg = make(tiny_model, {"train": str(QUICKSTART_DATA / "prefs_train.jsonl"), "max_rows": 64}, beta=1.0)
    ctx = context(tmp_path)
    result = kto.run(cfg, ctx)
    assert any("unpaired the preference pairs" in c for c in result.info["data"]["conversions"])
    assert result.info["data"]["train"]["rows"] == 64  # pairs read; 128 rows trained
    losses = [m["train/loss"] for m in read_metrics(ctx.metrics_path) if "train/loss" in m]
    assert all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(0.5, abs=0.02)  # 1 - σ(0) at the start: the policy is the reference
    assert losses[-1] < 0.7 * losses[0], losses
    assert result.metrics["rewards/chosen"] > result.metrics["rewards/rejected"]
    assert (ctx.artifact_dir / "model.safetensors").exists()


def test_kto_on_unpaired_rows_with_a_cached_reference(tmp_path, tiny_model):
    rows = [
        json.loads(line) for line in (QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines()[:24]
    ]
    unpaired = tmp_path / "unpaired.jsonl"
    with open(unpaired, "w") as f:
        for i, r in enumerate(rows):
            good = i % 3 != 0  # unbalanced on purpose: two desirable rows for one undesirable
            completion = r["chosen"] if good else r["rejected"]
            f.write(json.dumps({"prompt": r["prompt"], "completion": completion, "label": good}) + "\n")
    cfg = make(
        tiny_model,
        {"train": str(unpaired)},
        precompute_reference=True,
        desirable_weight=1.0,
        undesirable_weight=2.0,
        trainer={"max_steps": 1, "per_device_train_batch_size": 4},
    )
    _, info = kto.make_trainer(cfg, context(tmp_path, "first"))
    assert [e["status"] for e in info["reference"]["cache"]] == ["miss"]
    trainer, info = kto.make_trainer(cfg.model_copy(update={"beta": 0.3}), context(tmp_path, "second"))
    assert [e["status"] for e in info["reference"]["cache"]] == ["hit"]
    assert {"ref_logps", "ref_KL_logps"} <= set(trainer.train_dataset.column_names)


def test_kto_needs_two_rows_per_batch():
    with pytest.raises(ValueError, match="at least 2 rows per device"):
        kto.KTOStage.model_validate(
            {
                "name": "kto",
                "kind": "kto",
                "model": {"hub": "x"},
                "data": {"train": "x.jsonl"},
                "trainer": {"per_device_train_batch_size": 1},
            }
        )
