"""benchmarks/ppo_vs_trl.py: both sides are given the same PPO settings (no TRL 1.12 needed here)."""

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
spec = importlib.util.spec_from_file_location("ppo_vs_trl", REPO / "benchmarks" / "ppo_vs_trl.py")
ppo_vs_trl = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ppo_vs_trl)


@pytest.mark.parametrize("model", sorted(ppo_vs_trl.MODELS))
def test_both_sides_get_the_same_settings(model):
    from rlft.stages.ppo import PPOStage

    s = ppo_vs_trl.MODELS[model]
    stage = PPOStage.model_validate(ppo_vs_trl.rlft_pipeline(Path("sft"), Path("reward"), 7, s)["stages"][0])
    trl = ppo_vs_trl.trl_settings(7, s)
    # TRL 1.12: rollout = per_device_train_batch_size x gradient_accumulation_steps, split into
    # num_mini_batches optimizer steps (one micro-batch each)
    rollout = trl["per_device_train_batch_size"] * trl["gradient_accumulation_steps"]
    assert rollout == stage.rollout_batch_size and trl["total_episodes"] == 7 * rollout and stage.steps == 7
    assert (
        rollout // trl["num_mini_batches"] == stage.minibatch_size and stage.gradient_accumulation_steps == 1
    )
    pairs = {
        "num_ppo_epochs": stage.ppo_epochs,
        "response_length": stage.max_new_tokens,
        "temperature": stage.temperature,
        "learning_rate": stage.learning_rate,
        "adam_epsilon": stage.adam_eps,
        "kl_coef": stage.beta,
        "kl_estimator": stage.kl_estimator,
        "gamma": stage.gamma,
        "lam": stage.lam,
        "cliprange": stage.cliprange,
        "cliprange_value": stage.cliprange_value,
        "vf_coef": stage.vf_coef,
        "whiten_rewards": stage.whiten_rewards,
        "missing_eos_penalty": stage.missing_eos_penalty,
        "local_rollout_forward_batch_size": stage.forward_batch_size,
    }
    assert {k: trl[k] for k in pairs} == pairs
    assert stage.max_grad_norm is None  # TRL 1.12's PPO does not clip
    assert not trl["bf16"] and not trl["gradient_checkpointing"]
    assert (stage.tuning.method == "lora") == bool(trl["lora"])
    if trl["lora"]:
        assert (stage.tuning.r, stage.tuning.alpha) == (trl["lora"]["r"], trl["lora"]["alpha"])
