"""The reward stage on a tiny model: Bradley-Terry loss by hand, accuracy on separable pairs, artifact scoring."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from reward_models import RewardModel
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import reward


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "prefs_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


@pytest.fixture(scope="module")
def separable(tmp_path_factory) -> tuple[Path, Path]:
    """Pairs that differ only in case: the upper-case copy is chosen, the lower-case copy rejected."""
    folder = tmp_path_factory.mktemp("pairs")
    paths = []
    for name, source, n in (("train", "prefs_train.jsonl", 400), ("eval", "prefs_eval.jsonl", 100)):
        rows = [json.loads(line) for line in (QUICKSTART_DATA / source).read_text().splitlines()[:n]]
        for r in rows:
            r["rejected"] = [{"role": "assistant", "content": r["chosen"][0]["content"].lower()}]
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]


def make(tmp_path: Path, tiny_model: Path, train: Path, eval_: Path | None = None, **overrides):
    spec = {
        "name": "rm",
        "kind": "reward",
        "model": {"path": str(tiny_model)},
        "data": {"train": str(train), **({"eval": str(eval_)} if eval_ else {})},
        "trainer": {
            "max_steps": 60,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 16,
            "logging_steps": 10,
        },
        **overrides,
    }
    work = tmp_path / "work"
    ctx = stage_context(tmp_path, work)
    return reward.RewardStage.model_validate(spec), ctx


class FixedScores(torch.nn.Module):
    """Stands in for the model: returns given scores for the batch [chosen..., rejected...]."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.tensor(scores).unsqueeze(-1)

    def forward(self, **inputs):
        return SimpleNamespace(logits=self.scores)


def test_bradley_terry_loss_matches_hand_computation(tmp_path, tiny_model, separable):
    cfg, ctx = make(tmp_path, tiny_model, separable[0], trainer={"max_steps": 1})
    trainer, _ = reward.make_trainer(cfg, ctx)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    # chosen rewards (1, 0), rejected (0, 0): -log sigmoid(1) and -log sigmoid(0), averaged.
    loss = trainer.compute_loss(FixedScores([1.0, 0.0, 0.0, 0.0]), batch)
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-1)) + math.log(2)) / 2, abs=1e-6)  # 0.503204

    # A per-pair margin is a required gap: -log sigmoid(r_c - r_r - m). A bigger margin, a bigger loss.
    with_margin = {**batch, "margin": torch.tensor([0.5, 0.5])}
    loss_m = trainer.compute_loss(FixedScores([1.0, 0.0, 0.0, 0.0]), with_margin)
    assert loss_m.item() == pytest.approx(
        (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(0.5))) / 2, abs=1e-6
    )
    assert loss_m.item() > loss.item()


def test_margin_column_reaches_the_loss(tmp_path, tiny_model, separable):
    rows = [json.loads(line) for line in separable[0].read_text().splitlines()[:32]]
    data = tmp_path / "margins.jsonl"
    data.write_text("".join(json.dumps({**r, "margin": 2.0}) + "\n" for r in rows))
    cfg, ctx = make(tmp_path, tiny_model, data, trainer={"max_steps": 1})
    trainer, _ = reward.make_trainer(cfg, ctx)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    assert batch["margin"].tolist() == [2.0, 2.0]


def test_reward_stage_separates_pairs_and_its_artifact_scores(tmp_path, tiny_model, separable):
    cfg, ctx = make(tmp_path, tiny_model, *separable)
    result = reward.run(cfg, ctx)
    m = result.metrics
    assert m["reward_accuracy"] > 0.9, m
    assert m["rewards/margins"] > 0 and m["rewards/chosen"] > m["rewards/rejected"]
    assert math.isfinite(m["eval/loss"]) and m["train/global_step"] == 60
    assert 0 <= m["eval/rewards/ece"] <= 1 and result.info["calibration"]["ece"] == m["eval/rewards/ece"]
    reliability = result.info["calibration"]["bins"]
    assert sum(b["n"] for b in reliability) == result.info["calibration"]["n"] > 0
    assert all(0.5 <= b["low"] <= b["confidence"] <= b["high"] <= 1 for b in reliability)

    stats = json.loads((ctx.artifact_dir / reward.STATS_FILE).read_text())
    assert stats["n"] == 800 and stats["std"] > 0  # 400 pairs, chosen and rejected
    assert (ctx.artifact_dir / "data_report.json").exists()

    rm = RewardModel.from_pretrained(ctx.artifact_dir)
    rows = [json.loads(line) for line in separable[1].read_text().splitlines()[:20]]
    chosen = rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(c > r for c, r in zip(chosen, rejected, strict=True)) >= 18

    normalized = RewardModel.from_pretrained(ctx.artifact_dir, normalize=True)
    z = normalized.score([rows[0]["prompt"]], [rows[0]["chosen"]])[0]
    assert z == pytest.approx((chosen[0] - stats["mean"]) / stats["std"], rel=1e-4)


def test_lora_reward_model_trains_its_head_and_merges(tmp_path, tiny_model, separable):
    from transformers import AutoModelForSequenceClassification

    cfg, ctx = make(
        tmp_path, tiny_model, *separable, tuning={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0}
    )
    cfg.trainer = {**cfg.trainer, "max_steps": 10}
    result = reward.run(cfg, ctx)
    params = result.info["parameters"]
    assert 0 < params["trainable"] < params["total"] / 2
    merged = AutoModelForSequenceClassification.from_pretrained(ctx.artifact_dir)
    assert merged.score.weight.shape == (1, 32)
    assert not any("lora" in k for k in merged.state_dict())
    rm = RewardModel.from_pretrained(ctx.artifact_dir)
    assert len(rm.score(["shout: a b"], ["A B"])) == 1


def test_implicit_prompt_pairs_are_converted(tmp_path, tiny_model, separable):
    rows = [json.loads(line) for line in separable[0].read_text().splitlines()[:16]]
    implicit = tmp_path / "implicit.jsonl"
    implicit.write_text(
        "".join(
            json.dumps({"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]}) + "\n"
            for r in rows
        )
    )
    cfg, ctx = make(tmp_path, tiny_model, implicit, trainer={"max_steps": 1})
    trainer, info = reward.make_trainer(cfg, ctx)
    assert any("prompt" in note for note in info["data"]["conversions"])
    assert len(trainer.train_dataset) == 16
