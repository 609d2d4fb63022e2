"""`kind: kto`: preference optimisation from unpaired feedback on TRL's KTOTrainer.

KTO (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect Theoretic Optimization") needs
only a thumbs up or down per answer: rows of (prompt, completion, label). It raises the implicit
reward r = β (log π_θ(y|x) - log π_ref(y|x)) of desirable answers above, and of undesirable ones
below, a reference point z₀: a batch estimate of KL(π_θ || π_ref) made from mismatched
(prompt, completion) pairs of the same batch (so the batch must hold more than one row). The loss
per row is 1 - σ(r - z₀) for desirable and 1 - σ(z₀ - r) for undesirable answers, weighted by
`desirable_weight` / `undesirable_weight` (use them when the two kinds are unbalanced).

Preference pairs are accepted too: the data layer unpairs them (chosen -> label true, rejected ->
label false) and says so in the data report. The reference is handled as in `kind: dpo`
(rlft/reference.py): the starting model unless `reference:` names another, adapters merged,
optional precomputed and cached log-probs.

    setup: model (adapters merged) + tokenizer (+ tuning) -> unpaired rows -> KTOConfig -> reference -> KTOTrainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder (adapters merged) + task reward of greedy generations
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlft.config import ModelSource
from rlft.data import DataConfig
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    build_trainer_args,
    convert_data,
    finish_policy_stage,
    load_data,
    load_policy,
    report_data,
    training_callbacks,
)

# Stage keys that set KTOConfig fields: given here, not in `trainer:`.
STAGE_KEYS = {
    "beta": "beta",
    "loss_type": "loss_type",
    "desirable_weight": "desirable_weight",
    "undesirable_weight": "undesirable_weight",
    "max_length": "max_length",
    "precompute_ref_log_probs": "precompute_reference",
}
TRAIN_METRICS = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins")


class KTOStage(TrainerStage):
    """Preference optimisation from unpaired thumbs up/down (KTO) on TRL's KTOTrainer."""

    kind: Literal["kto"] = Field("kto", description="KTO, from unpaired feedback, on TRL's KTOTrainer")
    data: DataConfig = Field(
        description="unpaired rows (prompt, completion, label) or preference pairs (unpaired here)"
    )
    reference: ModelSource | None = Field(
        None, description="the frozen reference (same tokenizer); None: the stage's starting model"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or prefix_tuning",
    )
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto", description="kto: against a batch KL estimate; apo_zero_unpaired: APO-zero, no KL estimate"
    )
    beta: float = Field(0.1, gt=0, description="KL strength: higher keeps the policy closer to the reference")
    desirable_weight: float = Field(
        1.0, gt=0, description="weight of desirable rows' losses: raise it when they are the fewer"
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="weight of undesirable rows' losses: raise it when they are the fewer"
    )
    max_length: int | None = Field(
        1024, gt=0, description="prompt + answer tokens; longer rows are cut at the end (lower: less memory)"
    )
    precompute_reference: bool = Field(
        False,
        description="compute the reference log-probs once before training and cache them on disk, reused by "
        "later runs and sweep points over the same data and reference",
    )
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    trainer_config_class = "trl.trainer.kto_config:KTOConfig"
    uses_task_eval = True
    preference_data = True

    @model_validator(mode="after")
    def _stage_keys_here(self) -> KTOStage:
        for key, stage_key in STAGE_KEYS.items():
            if key in self.trainer:
                raise ValueError(f"trainer.{key}: set {stage_key} on the stage itself, not in trainer")
        if self.loss_type == "kto" and self.trainer.get("per_device_train_batch_size", 2) < 2:
            raise ValueError(
                "trainer.per_device_train_batch_size: KTO estimates its KL reference point from mismatched pairs "
                "within a batch; use at least 2 rows per device"
            )
        return self


def make_trainer(
    cfg: KTOStage, ctx: StageContext, *, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`: model, tokenizer, tuning, rows, KTOConfig, reference, KTOTrainer."""
    from trl import KTOConfig, KTOTrainer

    from rlft.reference import plan_reference, reference_trainer

    policy = load_policy(cfg, ctx)
    start, model, tokenizer = policy.start, policy.model, policy.tokenizer
    callbacks = [*(callbacks or []), *policy.callbacks]
    data = load_data(
        cfg, ctx, formats=("unpaired_preference", "preference", "implicit_preference"), tokenizer=tokenizer
    )
    data = convert_data(data, cfg, ctx, target="unpaired_preference")
    # KTO reads its rows in order (its KL pairs are built within each batch) and unpairing puts
    # a block of chosen rows before their rejected ones: batches of one label train nothing, since
    # the reference point z0 moves with the rewards. A seeded shuffle mixes the labels.
    data.train = data.train.shuffle(seed=cfg.seed).flatten_indices()
    desirable = sum(data.train["label"])
    n_eval = len(data.eval) if data.eval is not None else 0
    ctx.log(
        f"data: {len(data.train)} train rows ({desirable} desirable, {len(data.train) - desirable} undesirable), "
        f"{n_eval} eval rows"
    )

    reference = plan_reference(cfg, ctx, start=start, policy=model, tokenizer=tokenizer)
    ctx.log(f"reference: {reference.description}")
    settings = {
        "loss_type": cfg.loss_type,
        "beta": cfg.beta,
        "desirable_weight": cfg.desirable_weight,
        "undesirable_weight": cfg.undesirable_weight,
        "max_length": cfg.max_length,
        "precompute_ref_log_probs": reference.precompute,
    }
    args = build_trainer_args(KTOConfig, cfg, ctx, has_eval=data.eval is not None, defaults=settings)
    report_data(data, tokenizer, ctx, max_length=args.max_length)
    trainer, reference_info = reference_trainer(
        KTOTrainer, cfg, ctx, reference=reference, args=args, data=data, policy=policy, callbacks=callbacks
    )
    info = {
        **policy.info,
        "data": data.report,
        "reference": reference_info,
    }
    return trainer, info


def run(cfg: KTOStage, ctx: StageContext) -> StageResult:
    from rlft.tracking import namespaced

    trainer, info = make_trainer(cfg, ctx, callbacks=training_callbacks(cfg, ctx))
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics: dict[str, Any] = {"train/global_step": trainer.state.global_step}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        metrics["train/loss"] = logged[-1]["loss"]
        metrics.update({k: logged[-1][k] for k in TRAIN_METRICS if k in logged[-1]})
    if trainer.eval_dataset is not None:
        held_out = namespaced(trainer.evaluate())
        keep = ("eval/loss", *(f"eval/{k}" for k in TRAIN_METRICS))
        metrics.update({k: held_out[k] for k in keep if k in held_out})

    return finish_policy_stage(cfg, ctx, trainer, metrics=metrics, info=info)
