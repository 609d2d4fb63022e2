"""NaN/Inf guard (rlft/guards.py): stop naming the step and what, or skip the batch and count it."""

import math
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA, stage_context

from rlft.guards import NonFiniteError, NonFiniteGuard, non_finite
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import ppo, sft
from rlft.stages.base import StageContext


def test_non_finite_picks_the_bad_values_of_numbers_and_tensors():
    values = {
        "a": 1.0,
        "b": float("inf"),
        "c": torch.tensor([0.0, float("nan")]),
        "d": torch.ones(3),
        "e": None,
    }
    bad = non_finite(values)
    assert list(bad) == ["b", "c"] and bad["b"] == math.inf and math.isnan(bad["c"])


def test_stop_names_step_component_and_the_last_good_checkpoint(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):  # 6: half written, not good
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    guard = NonFiniteGuard(stage="ppo", checkpoint_dir=tmp_path)
    assert guard.check({"policy loss": 0.5}, step=6)
    with pytest.raises(
        NonFiniteError, match=r"stages.ppo: non-finite value loss \(nan\) at step 7; .*checkpoint-4"
    ):
        guard.check({"policy loss": 0.5, "value loss": float("nan")}, step=7)


def test_skip_counts_then_stops_past_max_nonfinite():
    guard = NonFiniteGuard(stage="s", mode="skip", max_skips=2)
    assert guard.check({"loss": float("nan")}, step=3) is False
    assert guard.check({"loss": 1.0}, step=4) is True
    assert guard.check({"loss": float("-inf")}, step=5) is False
    assert guard.summary() == {"skipped": 2, "steps": [3, 5]}
    with pytest.raises(NonFiniteError, match=r"at step 6, after 2 skipped batches \(max_nonfinite\)"):
        guard.check({"loss": float("nan")}, step=6)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


def context(tmp_path: Path) -> StageContext:
    work = tmp_path / "work"
    return stage_context(tmp_path, work)


def nan_loss_at(monkeypatch, steps: set[int]) -> None:
    """SFT's loss is NaN at the given training steps (one compute_loss call per step here)."""
    from trl import SFTTrainer

    original, calls = SFTTrainer.compute_loss, [0]

    def compute_loss(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        calls[0] += 1
        return loss * float("nan") if calls[0] in steps else loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", compute_loss)


def sft_stage(tiny_model: Path, **overrides) -> sft.SFTStage:
    spec = {
        "name": "sft",
        "kind": "sft",
        "model": {"path": str(tiny_model)},
        "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 64},
        "trainer": {"max_steps": 5, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4},
        **overrides,
    }
    return sft.SFTStage.model_validate(spec)


def test_sft_stops_at_the_step_whose_loss_is_nan(tmp_path, tiny_model, monkeypatch):
    nan_loss_at(monkeypatch, {3})
    with pytest.raises(
        NonFiniteError,
        match=r"stages.sft: non-finite gradient norm \(nan\) at step 3; .*the last good checkpoint, checkpoint-2, is kept",
    ):
        sft.run(sft_stage(tiny_model), context(tmp_path))


def test_sft_skip_mode_drops_the_batches_counts_them_and_stops_past_the_max(
    tmp_path, tiny_model, monkeypatch
):
    nan_loss_at(monkeypatch, {2, 4})
    ctx = context(tmp_path / "skip")
    result = sft.run(sft_stage(tiny_model, on_nonfinite="skip"), ctx)
    assert ctx.guard.summary() == {"skipped": 2, "steps": [2, 4]}
    assert result.metrics["train/global_step"] == 5
    from transformers import AutoModelForCausalLM

    weights = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    assert all(torch.isfinite(w).all() for w in weights.values())  # the NaN batches never reached them

    nan_loss_at(monkeypatch, {2, 4})
    with pytest.raises(NonFiniteError, match="at step 4, after 1 skipped batches"):
        sft.run(sft_stage(tiny_model, on_nonfinite="skip", max_nonfinite=1), context(tmp_path / "max"))


REWARDS = """
calls = [0]


def flaky_reward(prompts, completions, **fields):
    calls[0] += 1
    return [float("nan") if calls[0] == 2 and i == 1 else 0.5 for i in range(len(prompts))]
"""


def test_ppo_stops_naming_the_reward_function_and_the_step(tmp_path, tiny_model):
    (tmp_path / "rewards.py").write_text(REWARDS)
    cfg = ppo.PPOStage.model_validate(
        {
            "name": "ppo",
            "kind": "ppo",
            "model": {"path": str(tiny_model)},
            "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl"), "max_rows": 64},
            "reward": {"function": "rewards.py:flaky_reward"},
            "steps": 3,
            "rollout_batch_size": 4,
            "minibatch_size": 4,
            "max_new_tokens": 4,
        }
    )
    with pytest.raises(
        NonFiniteError, match=r"stages.ppo: non-finite reward '.*flaky_reward.*' \(nan\) at step 2"
    ):
        ppo.run(cfg, context(tmp_path))


def test_the_fused_gradient_check_agrees_with_the_element_check():
    import torch

    from rlft.guards import _all_finite

    grads = [torch.randn(4, 3), torch.randn(5), torch.zeros(2, 2, dtype=torch.float16)]
    assert _all_finite(grads)
    for bad in (float("nan"), float("inf"), float("-inf")):
        broken = [g.clone() for g in grads]
        broken[1][2] = bad
        assert not _all_finite(broken)
    large = [torch.full((64,), 60000.0, dtype=torch.float16)]  # finite, but its fp16 norm overflows
    assert torch.stack(torch._foreach_norm(large)).isinf().all() and _all_finite(large)
