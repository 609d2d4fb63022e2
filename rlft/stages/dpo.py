"""`kind: dpo`: offline preference optimisation (DPO and its family) on TRL's DPOTrainer.

The policy learns from preference pairs directly, without a reward model: the loss raises
log π_θ(chosen) - log π_ref(chosen) above log π_θ(rejected) - log π_ref(rejected) (Rafailov et al.,
2023). `loss_type` picks the loss, several with `loss_weights` (rlft/losses.py has each formula
and its paper): `sigmoid` (DPO; cDPO with `label_smoothing`), `ipo`, `hinge`, `robust` (rDPO),
`sigmoid_norm` (length-normalised), `sft` (NLL of the chosen answers; `[sigmoid, sft]` = DPO+NLL).

The reference (rlft/reference.py) is the starting model, usually `{from: sft}`, unless `reference:`
names another; an adapter-only starting model is merged first, so at step 0 the policy *is* the
reference: every margin is 0 and the loss log 2. With `precompute_reference: true` the reference
log-probs of the train and eval pairs are computed once and cached on disk, so another β, loss
or sweep point over the same data and reference does not run the reference model again.

Padding: TRL 1.16 turns DPO's `padding_free` off (with a warning), so every batch pads to its
longest pair. On skewed lengths, `trainer: {train_sampling_strategy: group_by_length}` (batches of
similar lengths, transformers' LengthGroupedSampler) recovers most of it: see `pair_lengths`.

    setup: model (adapters merged) + tokenizer (+ tuning) -> pairs -> DPOConfig -> reference -> DPOTrainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder (adapters merged) + task reward of greedy generations
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from rlft.config import ModelSource, also_accepts
from rlft.data import DataConfig
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    as_explicit_preferences,
    build_trainer_args,
    finish_policy_stage,
    load_data,
    load_policy,
    report_data,
    training_callbacks,
)

LossName = Literal["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "sft"]
# Stage keys that set DPOConfig fields: given here, not in `trainer:` (one place for each value).
STAGE_KEYS = {
    "beta": "beta",
    "loss_type": "loss_type",
    "loss_weights": "loss_weights",
    "label_smoothing": "label_smoothing",
    "max_length": "max_length",
    "precompute_ref_log_probs": "precompute_reference",
}
# transformers' samplers that batch pairs of similar lengths: they need a length per row
LENGTH_SAMPLERS = ("group_by_length", "batch_rebalance")
# Final metrics read from the trainer's last training log (TRL's names, kept as they are).
TRAIN_METRICS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


class DPOStage(TrainerStage):
    """Offline preference optimisation (DPO and its family) on TRL's DPOTrainer, against a frozen reference."""

    kind: Literal["dpo"] = Field(
        "dpo", description="preference optimisation (DPO family) on TRL's DPOTrainer"
    )
    data: DataConfig = Field(
        description="preference pairs: prompt, chosen, rejected (an implicit prompt is split off)"
    )
    reference: ModelSource | None = Field(
        None, description="the frozen reference (same tokenizer); None: the stage's starting model"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or prefix_tuning",
    )
    loss_type: list[LossName] = Field(
        ["sigmoid"],
        description="one loss or several, summed with loss_weights (rlft/losses.py): sigmoid (DPO), ipo, hinge, "
        "robust (rDPO), sigmoid_norm (length-normalised), sft (NLL of chosen)",
        json_schema_extra=also_accepts({"enum": list(get_args(LossName)), "type": "string"}),
    )
    loss_weights: list[float] | None = Field(None, description="one weight per loss_type; None: 1 each")
    beta: float = Field(0.1, gt=0, description="KL strength: higher keeps the policy closer to the reference")
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="assumed share of flipped labels: cDPO with sigmoid, rDPO with robust; 0: labels trusted",
    )
    max_length: int | None = Field(
        1024, gt=0, description="prompt + answer tokens; longer pairs are cut at the end (lower: less memory)"
    )
    precompute_reference: bool = Field(
        False,
        description="compute the reference log-probs once before training and cache them on disk, reused by "
        "later runs and sweep points over the same data and reference",
    )
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    trainer_config_class = "trl.trainer.dpo_config:DPOConfig"
    uses_task_eval = True
    preference_data = True

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> DPOStage:
        check_losses(self.loss_type, self.loss_weights, self.label_smoothing)
        for key, stage_key in STAGE_KEYS.items():
            if key in self.trainer:
                raise ValueError(f"trainer.{key}: set {stage_key} on the stage itself, not in trainer")
        return self


def check_losses(loss_type: list[str], loss_weights: list[float] | None, label_smoothing: float) -> None:
    """ValueError unless the loss settings go together (the dpo stage's and a multitask dpo task's)."""
    if not loss_type:
        raise ValueError("loss_type: give at least one loss, e.g. [sigmoid]")
    if len(set(loss_type)) != len(loss_type):
        raise ValueError(f"loss_type: {loss_type} names a loss twice; weight it with loss_weights")
    if loss_weights is not None and len(loss_weights) != len(loss_type):
        raise ValueError(
            f"loss_weights: {len(loss_weights)} weights for {len(loss_type)} losses "
            f"({', '.join(loss_type)}); give one weight per loss"
        )
    if label_smoothing > 0:
        if not {"sigmoid", "robust"} & set(loss_type):
            raise ValueError(
                f"label_smoothing is read by sigmoid (cDPO) and robust (rDPO) only; loss_type {loss_type} has neither"
            )
        if {"sigmoid", "robust"} <= set(loss_type):
            raise ValueError(
                "label_smoothing would mean cDPO for sigmoid and rDPO for robust at once; use one of them"
            )


def trl_losses(
    loss_type: list[str], loss_weights: list[float] | None, label_smoothing: float
) -> dict[str, Any]:
    """rlft's loss settings as DPOConfig's `loss_type`, `loss_weights` and `label_smoothing`.

    rlft's loss names are TRL's. One setting needs translating: TRL 1.16's `sigmoid` ignores
    `label_smoothing` (only robust, exo_pair and aot read it), so cDPO, `sigmoid` with ε > 0,
    runs as (1 - ε)·sigmoid + ε·robust with TRL's label_smoothing at 1, where robust is
    [-(1 - 1) log σ(βΔ) + log σ(-βΔ)] / (1 - 2) = -log σ(-βΔ): together exactly
    -(1 - ε) log σ(βΔ) - ε log σ(-βΔ) (tests/test_losses.py checks it on TRL's own loss).
    """
    weights = list(loss_weights or [1.0] * len(loss_type))
    if label_smoothing == 0 or "sigmoid" not in loss_type:
        return {"loss_type": list(loss_type), "loss_weights": weights, "label_smoothing": label_smoothing}
    types, mapped = [], []
    for name, weight in zip(loss_type, weights, strict=True):
        if name == "sigmoid":
            types += ["sigmoid", "robust"]
            mapped += [weight * (1 - label_smoothing), weight * label_smoothing]
        else:
            types.append(name)
            mapped.append(weight)
    return {"loss_type": types, "loss_weights": mapped, "label_smoothing": 1.0}


def make_trainer(
    cfg: DPOStage, ctx: StageContext, *, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`: model, tokenizer, tuning, pairs, DPOConfig, reference, DPOTrainer."""
    from trl import DPOConfig, DPOTrainer

    from rlft.reference import plan_reference, reference_trainer

    policy = load_policy(cfg, ctx)
    start, model, tokenizer = policy.start, policy.model, policy.tokenizer
    callbacks = [*(callbacks or []), *policy.callbacks]
    data = load_data(cfg, ctx, formats=("preference", "implicit_preference"), tokenizer=tokenizer)
    data = as_explicit_preferences(data, cfg, ctx)
    n_eval = len(data.eval) if data.eval is not None else 0
    ctx.log(f"data: {len(data.train)} train pairs, {n_eval} eval pairs")

    reference = plan_reference(cfg, ctx, start=start, policy=model, tokenizer=tokenizer)
    ctx.log(f"reference: {reference.description}")
    losses = trl_losses(cfg.loss_type, cfg.loss_weights, cfg.label_smoothing)
    if losses["loss_type"] != cfg.loss_type:
        ctx.log(
            f"cDPO: sigmoid with label_smoothing {cfg.label_smoothing} runs as TRL's {losses['loss_type']} "
            f"weighted {losses['loss_weights']} at label_smoothing 1.0 (the same loss; see rlft.stages.dpo.trl_losses)"
        )
    settings = {
        **losses,
        "beta": cfg.beta,
        "max_length": cfg.max_length,
        "precompute_ref_log_probs": reference.precompute,
    }
    args = build_trainer_args(DPOConfig, cfg, ctx, has_eval=data.eval is not None, defaults=settings)
    report_data(data, tokenizer, ctx, max_length=args.max_length)
    trainer, reference_info = reference_trainer(
        DPOTrainer, cfg, ctx, reference=reference, args=args, data=data, policy=policy, callbacks=callbacks
    )
    if args.train_sampling_strategy in LENGTH_SAMPLERS:
        add_pair_lengths(trainer)
    info = {
        **policy.info,
        "data": data.report,
        "reference": reference_info,
        "trl_losses": losses,
    }
    return trainer, info


def pair_lengths(rows: dict[str, list[list[int]]]) -> list[int]:
    """Tokens each tokenized pair pads to in a batch: its prompt plus the longer of its two answers.

    (TRL's DPO collator puts chosen and rejected rows in one batch, padded to the longest.)
    """
    return [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"], strict=True)
    ]


def add_pair_lengths(trainer: Any) -> None:
    """Make `train_sampling_strategy: group_by_length` (or batch_rebalance) work for DPO.

    transformers' length-grouped samplers read a length column (`length_column_name`) or measure
    `input_ids`; TRL's tokenized pairs have neither (`prompt_ids`, `chosen_ids`, `rejected_ids`), so
    the sampler raises "Can only automatically infer lengths ...". This writes the column into the
    train and eval pairs and keeps it past the trainer's removal of the columns the model does not
    take (the collator ignores it).
    """
    import datasets

    name = trainer.args.length_column_name

    def with_lengths(ds: Any) -> Any:
        if (
            not isinstance(ds, datasets.Dataset)
            or name in ds.column_names
            or "prompt_ids" not in ds.column_names
        ):
            return ds
        return ds.map(lambda rows: {name: pair_lengths(rows)}, batched=True, desc="Measuring pair lengths")

    trainer.train_dataset = with_lengths(trainer.train_dataset)
    if isinstance(trainer.eval_dataset, dict):
        trainer.eval_dataset = {k: with_lengths(v) for k, v in trainer.eval_dataset.items()}
    else:
        trainer.eval_dataset = with_lengths(trainer.eval_dataset)
    trainer._set_signature_columns_if_needed()  # TRL's list: prompt_ids, chosen_ids, ...
    if name not in trainer._signature_columns:
        trainer._signature_columns = [*trainer._signature_columns, name]


def final_metrics(trainer: Any) -> dict[str, Any]:
    """train/global_step, the last logged train/loss and reward statistics (TRL's names)."""
    metrics: dict[str, Any] = {"train/global_step": trainer.state.global_step}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        metrics["train/loss"] = logged[-1]["loss"]
        metrics.update({k: logged[-1][k] for k in TRAIN_METRICS if k in logged[-1]})
    return metrics


def run(cfg: DPOStage, ctx: StageContext) -> StageResult:
    from rlft.tracking import namespaced

    trainer, info = make_trainer(cfg, ctx, callbacks=training_callbacks(cfg, ctx))
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics = final_metrics(trainer)
    if trainer.eval_dataset is not None:
        held_out = namespaced(trainer.evaluate())
        keep = ("eval/loss", *(f"eval/{k}" for k in TRAIN_METRICS))
        metrics.update({k: held_out[k] for k in keep if k in held_out})
        ctx.log(
            f"held-out pairs: loss {held_out['eval/loss']:.4f}, margin {held_out.get('eval/rewards/margins', 0):.3f}, "
            f"accuracy {held_out.get('eval/rewards/accuracies', 0):.3f}"
        )

    return finish_policy_stage(cfg, ctx, trainer, metrics=metrics, info=info)
