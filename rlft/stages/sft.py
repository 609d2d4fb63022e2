"""`kind: sft`: supervised fine-tuning on TRL's SFTTrainer.

Data: prompt-completion (standard or conversational) or language modelling (`text` or
`messages`). The loss is on completions only by default: prompt tokens carry label -100
(prompt-completion data), and for `messages` data only assistant turns train when the chat
template marks them with `{% generation %}`.

    setup: model + tokenizer (+ tuning) -> data -> SFTConfig -> SFTTrainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder (adapters merged) + task reward of greedy generations
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field

from rlft.data import DataConfig
from rlft.errors import ConfigError
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    build_trainer_args,
    finish_policy_stage,
    load_data,
    load_policy,
    report_data,
    training_callbacks,
)

logger = logging.getLogger(__name__)


class SFTStage(TrainerStage):
    """Supervised fine-tuning on TRL's SFTTrainer; the loss is on completions only by default."""

    kind: Literal["sft"] = Field("sft", description="supervised fine-tuning on TRL's SFTTrainer")
    data: DataConfig = Field(
        description="training (and eval) data: prompt-completion or language modelling (`text` or `messages`)"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or prefix_tuning",
    )
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    trainer_config_class = "trl.trainer.sft_config:SFTConfig"
    uses_task_eval = True


def trainer_args(
    cfg: SFTStage, ctx: StageContext, *, has_eval: bool, conversational_lm: bool, template: str | None
) -> Any:
    """SFTConfig: rlft's defaults, then the stage's `trainer:` section."""
    # `messages` data: train on assistant turns only, when the template can mark them.
    assistant_only = conversational_lm and template is not None and "{% generation %}" in template
    if conversational_lm and not cfg.trainer.get("assistant_only_loss", assistant_only):
        logger.warning("the chat template has no {% generation %} markers: loss on every token of `messages`")
    from trl import SFTConfig

    return build_trainer_args(
        SFTConfig, cfg, ctx, has_eval=has_eval, defaults={"assistant_only_loss": assistant_only}
    )


def make_trainer(
    cfg: SFTStage, ctx: StageContext, *, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`: model, tokenizer, tuning, data, SFTConfig, SFTTrainer."""
    from trl import SFTTrainer

    policy = load_policy(cfg, ctx)
    model, tokenizer = policy.model, policy.tokenizer
    callbacks = [*(callbacks or []), *policy.callbacks]
    data = load_data(cfg, ctx, formats=("language_modeling", "prompt_completion"), tokenizer=tokenizer)
    ctx.log(
        f"data: {data.format}, {len(data.train)} train rows, {len(data.eval) if data.eval is not None else 0} eval rows"
    )
    conversational_lm = data.format == "language_modeling" and "messages" in data.train.column_names
    args = trainer_args(
        cfg,
        ctx,
        has_eval=data.eval is not None,
        conversational_lm=conversational_lm,
        template=tokenizer.chat_template,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    _check_truncation(
        cfg, ctx, before=len(data.train), after=len(trainer.train_dataset), max_length=args.max_length
    )
    report_data(data, tokenizer, ctx, max_length=args.max_length)
    info = {**policy.info, "data": data.report}
    return trainer, info


def _check_truncation(
    cfg: SFTStage, ctx: StageContext, *, before: int, after: int, max_length: int | None
) -> None:
    """TRL drops rows whose completion was truncated away; say so, and refuse to train on nothing."""
    if after == before:
        return
    what = f"{before - after} of {before} training rows have no completion token left after truncation to max_length={max_length}"
    if after == 0:
        raise ConfigError(f"stages.{cfg.name}: {what}; raise stages.{cfg.name}.trainer.max_length")
    logger.warning(f"{what}; they are left out (raise trainer.max_length to keep them)")


def run(cfg: SFTStage, ctx: StageContext) -> StageResult:
    trainer, info = make_trainer(cfg, ctx, callbacks=training_callbacks(cfg, ctx))
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics: dict[str, Any] = {"train/global_step": trainer.state.global_step}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["train/loss"] = losses[-1]
    if trainer.eval_dataset is not None:
        evals = trainer.evaluate()
        metrics["eval/loss"] = evals["eval_loss"]
        ctx.tracker.log({"eval/loss": evals["eval_loss"]}, step=trainer.state.global_step)

    return finish_policy_stage(cfg, ctx, trainer, metrics=metrics, info=info)
