"""Shared fixtures: tiny pipelines over the quickstart's shipped data, W&B kept off the network."""

import logging
import os
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART_DATA = REPO / "configs" / "data" / "quickstart"

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stage_context(tmp_path: Path, work: Path | None = None, **fields):
    """The StageContext a stage's functions get from the runner, for calling them directly in a test: the run
    folder `tmp_path`, the work folder `work` (default tmp_path/work, its artifact folder inside), metrics
    into work/metrics.jsonl; `fields` replace any of its values (model_paths, ...)."""
    from rlft.stages.base import StageContext
    from rlft.tracking import Tracker

    work = work or tmp_path / "work"
    values = dict(
        pipeline="t",
        run_dir=tmp_path,
        work_dir=work,
        artifact_dir=work / "artifact",
        base_dir=tmp_path,
        model_paths={},
        tracker=Tracker(work / "metrics.jsonl"),
    )
    return StageContext(**{**values, **fields})


def tiny_pipeline_yaml(
    *, name: str = "t", sft_trainer: str = "{max_steps: 4}", extra_stage: str = "", evaluate: bool = False
) -> str:
    """A one-stage SFT pipeline on a tiny model (hidden 32, 2 layers) and 64 quickstart rows."""
    text = f"""
    name: {name}
    model:
      tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}
    stages:
      - name: sft
        kind: sft
        data: {{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 64}}
        trainer: {sft_trainer}
    """
    text = textwrap.dedent(text) + textwrap.indent(textwrap.dedent(extra_stage).strip("\n") + "\n", "  ")
    if evaluate:
        text += (
            f"evaluate: {{prompts: {QUICKSTART_DATA}/heldout_prompts.jsonl, reward: reward_models.tasks:uppercase_copy, "
            "max_prompts: 8, max_new_tokens: 8}\n"
        )
    return text


@pytest.fixture
def write_pipeline(tmp_path):
    def write(**kwargs) -> Path:
        path = tmp_path / "pipeline.yaml"
        path.write_text(tiny_pipeline_yaml(**kwargs))
        return path

    return write


@pytest.fixture(autouse=True)
def rlft_logger():
    """The `rlft` logger as the test found it, afterwards: the CLI sets it up for the whole process
    (rlft.log.setup_logging), and no test may inherit another's handlers, level or propagation."""
    logger = logging.getLogger("rlft")
    handlers, level, propagate = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate
