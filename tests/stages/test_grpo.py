"""GRPO and RLOO on TRL's trainers, in-process on a tiny model: rewards from reward_models (a function,
a reward model scoring with its own tokenizer, a weighted sum handed to TRL part by part)."""

import math
from pathlib import Path

import pytest
from conftest import QUICKSTART_DATA, stage_context

from rlft.errors import ConfigError
from rlft.models.tiny import build_tiny_from_texts
from rlft.stages import grpo, rloo, stage_config_class
from rlft.stages.base import StageContext
from rlft.tracking import read_metrics

REWARDS = """
def uppercase_share(prompts, completions, **fields):
    out = []
    for c in completions:
        text = c if isinstance(c, str) else c[-1]["content"]
        letters = [ch for ch in text if ch.isalpha()]
        out.append(sum(ch.isupper() for ch in letters) / len(letters) if letters else 0.0)
    return out
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("tiny") / "model", hidden_size=32, num_layers=2, num_heads=2
    )


@pytest.fixture(scope="module")
def reward_model(tiny_model, tmp_path_factory) -> Path:
    """An (untrained) reward-stage-like artifact: a one-output classifier with its own tokenizer."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path_factory.mktemp("rm") / "rm"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1)
    model.config.pad_token_id = 0
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model / name).exists():
            (out / name).write_bytes((tiny_model / name).read_bytes())
    return out


def make(module, tmp_path: Path, tiny_model: Path, **overrides) -> tuple[object, StageContext]:
    (tmp_path / "rewards.py").write_text(REWARDS)
    spec = {
        "name": module.__name__.rsplit(".", 1)[-1],
        "kind": module.__name__.rsplit(".", 1)[-1],
        "model": {"path": str(tiny_model)},
        "data": {"train": str(QUICKSTART_DATA / "heldout_prompts.jsonl"), "max_rows": 64},
        "reward": {"function": "rewards.py:uppercase_share"},
        "trainer": {
            "max_steps": 3,
            "per_device_train_batch_size": 8,
            "num_generations": 4,
            "max_completion_length": 6,
            "learning_rate": 1e-3,
            "logging_steps": 1,
        },
        **overrides,
    }
    cfg = stage_config_class(spec["kind"]).model_validate(spec)
    work = tmp_path / "work"
    (work / "artifact").mkdir(parents=True, exist_ok=True)
    ctx = stage_context(tmp_path, work)
    return cfg, ctx


@pytest.mark.parametrize("module", [grpo, rloo], ids=["grpo", "rloo"])
def test_trains_on_a_reward_function_and_saves(module, tmp_path, tiny_model):
    from transformers import AutoModelForCausalLM

    cfg, ctx = make(module, tmp_path, tiny_model)
    result = module.run(cfg, ctx)
    assert result.metrics["train/global_step"] == 3
    rewards = [m["train/reward"] for m in read_metrics(ctx.metrics_path) if "train/reward" in m]
    assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)
    assert "rewards/uppercase_share/mean" in read_metrics(ctx.metrics_path)[0]
    AutoModelForCausalLM.from_pretrained(ctx.artifact_dir)  # a plain HF folder
    if module is rloo:  # RLOO's KL penalty (beta 0.05 by default) is reported as the stage's kl
        assert math.isfinite(result.metrics["kl"])


@pytest.mark.parametrize(
    ("module", "method"),
    [(grpo, "prefix_tuning"), (rloo, "prompt_tuning")],
    ids=["grpo-prefix", "rloo-prompt"],
)
def test_prompt_methods_sample_and_keep_the_prompt(module, method, tmp_path, tiny_model):
    """TRL samples through the model's `generate`: rlft's for a prompt (peft's is wrong under transformers 5)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlft.models.loading import ResolvedModel, load_causal_lm

    tuning = {"method": method, "num_virtual_tokens": 4, "init_text": "shout"}
    cfg, ctx = make(module, tmp_path, tiny_model, tuning=tuning)
    result = module.run(cfg, ctx)
    assert result.metrics["train/global_step"] == 3
    assert result.info["saved"] == {"merged": False, "adapter": "adapter/", "peft": method}
    rewards = [m["train/reward"] for m in read_metrics(ctx.metrics_path) if "train/reward" in m]
    assert len(rewards) == 3 and all(0.0 <= r <= 1.0 for r in rewards)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    root = AutoModelForCausalLM.from_pretrained(ctx.artifact_dir).state_dict()
    assert all(torch.equal(base[k], root[k]) for k in base)  # only the prompt trained
    assert isinstance(load_causal_lm(ResolvedModel(str(ctx.artifact_dir))), PeftModel)

    # TRL's reference for a peft policy is "adapter disabled": from a kept prompt, that is not the start
    trainer = {**cfg.trainer, "beta": 0.05}
    (tmp_path / "next").mkdir()
    cfg, ctx = make(module, tmp_path / "next", ctx.artifact_dir, tuning={"method": "full"}, trainer=trainer)
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    classes = {grpo: (GRPOTrainer, GRPOConfig), rloo: (RLOOTrainer, RLOOConfig)}[module]
    with pytest.raises(ConfigError, match="starting model keeps a learned prompt"):
        grpo.make_trainer(cfg, ctx, trainer_class=classes[0], config_class=classes[1])


def test_weighted_sum_goes_to_trl_part_by_part(tmp_path, tiny_model, reward_model):
    """A sum with a reward model: one callable per part (the model scores text itself, with its own
    tokenizer), the weights as reward_weights, each part logged by TRL."""
    reward = {
        "sum": [
            {"path": str(reward_model), "weight": 0.5},
            {"function": "rewards.py:uppercase_share", "weight": 2.0},
        ]
    }
    cfg, ctx = make(grpo, tmp_path, tiny_model, reward=reward)
    funcs, weights = grpo.reward_functions(cfg, ctx)
    assert [f.__name__ for f in funcs] == ["rm", "uppercase_share"] and weights == [0.5, 2.0]
    assert funcs[1](["shout: a"], ["A b"]) == [0.5]  # unweighted inside: TRL applies the weights
    grpo.run(cfg, ctx)
    first = read_metrics(ctx.metrics_path)[0]
    assert {"rewards/rm/mean", "rewards/uppercase_share/mean"} <= first.keys()


def test_config_checks():
    base = {"name": "g", "kind": "grpo", "data": {"train": "x.jsonl"}, "reward": {"from": "reward"}}
    with pytest.raises(ValueError, match="reward_weights: give each part's weight in reward.sum"):
        grpo.GRPOStage.model_validate({**base, "trainer": {"reward_weights": [1.0]}})
    cfg = rloo.RLOOStage.model_validate({**base, "kind": "rloo", "model": {"from": "sft"}})
    assert cfg.references() == [("model", "sft"), ("reward", "reward")]
    assert cfg.trainer_config_class.endswith("RLOOConfig")
