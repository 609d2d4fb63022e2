"""`kind: evaluate`: measure a model's verifiable task reward; trains nothing.

The pipeline adds one such stage named `base` in front of the others when the pipeline has an
`evaluate:` block, so every summary starts with the starting model's reward.

With `save_model: true` (declare the `base` stage yourself) the stage also keeps the model it
measured as its artifact, a plain Hugging Face folder: later stages start from `{from: base}`,
which loads in seconds where a GGUF source is dequantised again by every stage that names it
(~38 s for SmolLM2-135M on 2 CPU cores), and `rlft eval` can measure every stage against it
(win rate, KL): configs/examples/smollm2_sentiment.yaml.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlft.stages.base import StageBase, StageContext, StageResult
from rlft.stages.common import measure_task_reward


class EvaluateStage(StageBase):
    """The pipeline's verifiable task reward (its `evaluate:` block) of a model; trains nothing."""

    kind: Literal["evaluate"] = Field(
        "evaluate", description="measure the task reward of `model` with the pipeline's `evaluate:` block"
    )

    save_model: bool = Field(
        False,
        description="keep the measured model as this stage's artifact (a plain HF folder, a GGUF source "
        "dequantised once): later stages start from {from: NAME}, and rlft eval compares against it",
    )

    uses_task_eval = True


def run(cfg: EvaluateStage, ctx: StageContext) -> StageResult:
    from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source

    resolved = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    ctx.log(f"evaluating {resolved.description}")
    tokenizer, fixups = load_tokenizer(resolved)
    model = load_causal_lm(resolved, dtype=cfg.model.dtype, tokenizer=tokenizer)
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    result = measure_task_reward(model, tokenizer, ctx)
    metrics = {"task_reward": result["task_reward"]} if result else {}
    info = {"tokenizer_fixups": fixups, "samples": (result or {}).get("samples")}
    if cfg.save_model and ctx.is_main_process:
        from rlft.models.tuning import save_model

        info["saved"] = save_model(model, tokenizer, ctx.artifact_dir)
        ctx.log(f"kept the model in {ctx.artifact_dir}: later stages start from {{from: {cfg.name}}}")
    return StageResult(metrics=metrics, info=info, has_model=cfg.save_model)
