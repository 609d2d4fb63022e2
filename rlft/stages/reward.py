"""`kind: reward`: a reward model trained on preference pairs, on TRL's RewardTrainer.

A sequence-classification head with one output is put on the stage's starting model (usually
`{from: sft}`) and trained with the Bradley-Terry loss (Bradley & Terry, 1952; Ouyang et al.,
2022, eq. 1): -log sigmoid(r(x, y_chosen) - r(x, y_rejected) - margin), where `margin` is an
optional per-pair column (Touvron et al., 2023, Llama 2, sec. 3.2.2), plus
`center_rewards_coefficient` * mean((r_c + r_r)^2) (Eisenstein et al., 2023) when set.

    setup: model (+ score head) + tokenizer (+ tuning) -> preference data -> RewardConfig -> RewardTrainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder + reward_stats.json (mean/std of rewards on training responses)
    eval:  pairwise accuracy, mean margin, reward mean/std of chosen and rejected, and calibration
           (ECE of σ(margin) with its reliability table; rlft.comparisons.calibration) on held-out pairs

The artifact loads with `reward_models.RewardModel.from_pretrained(runs/<pipeline>/<stage>)`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from rlft.data import DataConfig
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    as_explicit_preferences,
    build_trainer_args,
    load_data,
    rank_summary,
    report_data,
    training_callbacks,
)

logger = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"  # {"mean", "std", "n"}: rewards of the training responses


class RewardStage(TrainerStage):
    """A Bradley-Terry reward model on TRL's RewardTrainer: a one-output score head on the starting model."""

    kind: Literal["reward"] = Field("reward", description="a reward model on TRL's RewardTrainer")
    data: DataConfig = Field(
        description="preference pairs: prompt, chosen, rejected (an optional `margin` column per pair)"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train (the score head always does): method full, freeze, lora, dora, "
        "adapter, prompt_tuning or prefix_tuning",
    )
    stats_rows: int = Field(
        2000,
        gt=0,
        description="training pairs scored for the normalisation statistics (reward_stats.json): more = "
        "steadier mean/std, slower",
    )

    trainer_config_class = "trl.trainer.reward_config:RewardConfig"
    preference_data = True


def make_trainer(
    cfg: RewardStage, ctx: StageContext, *, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`."""
    from trl import RewardConfig, RewardTrainer

    from rlft.models.loading import load_causal_lm, load_tokenizer, resolve_source
    from rlft.models.tuning import (
        apply_tuning,
        count_parameters,
        describe_parameters,
        tuning_callbacks,
    )

    resolved = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    ctx.log(f"model: {resolved.description} (+ a one-output score head)")
    tokenizer, fixups = load_tokenizer(resolved)
    model = load_causal_lm(
        resolved,
        dtype=cfg.model.dtype,
        tokenizer=tokenizer,
        auto_class="AutoModelForSequenceClassification",
        log=ctx.log,
        num_labels=1,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # the score is read at the last non-pad token
    model = apply_tuning(model, cfg.tuning, task_type="SEQ_CLS", tokenizer=tokenizer)
    params = count_parameters(model)
    ctx.log(describe_parameters(cfg.tuning, params))
    callbacks = [*(callbacks or []), *tuning_callbacks(model, cfg.tuning, log=ctx.log)]

    data = load_data(cfg, ctx, formats=("preference", "implicit_preference"), tokenizer=tokenizer)
    data = as_explicit_preferences(data, cfg, ctx)
    n_eval = len(data.eval) if data.eval is not None else 0
    ctx.log(f"data: {len(data.train)} train pairs, {n_eval} eval pairs")
    args = build_trainer_args(RewardConfig, cfg, ctx, has_eval=data.eval is not None, defaults={})
    report_data(data, tokenizer, ctx, max_length=args.max_length)
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    info = {
        "parameters": params,
        "tokenizer_fixups": fixups,
        "data": data.report,
        "model": resolved.description,
    }
    return trainer, info


def pair_rewards(trainer: Any, dataset: Any, *, max_rows: int | None = None) -> tuple[Any, Any]:
    """Rewards of the chosen and rejected responses of a tokenized preference dataset: two (N,) tensors."""
    import torch

    if max_rows is not None and len(dataset) > max_rows:
        dataset = dataset.select(range(max_rows))
    model = trainer.model
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    with torch.inference_mode():
        for batch in trainer.get_eval_dataloader(dataset):
            batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            scores = model(**batch, use_cache=False).logits.squeeze(-1).float()  # (2B,): chosen then rejected
            c, r = torch.chunk(scores, 2)
            # Several processes each score a shard: gather them (drops the padding duplicates).
            c, r = trainer.accelerator.gather_for_metrics((c, r))
            chosen.append(c.cpu())
            rejected.append(r.cpu())
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def pair_metrics(chosen: Any, rejected: Any) -> dict[str, float]:
    """Pairwise accuracy, mean margin and reward mean/std of chosen and rejected responses."""
    margins = chosen - rejected
    return {
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/chosen_std": chosen.std().item() if len(chosen) > 1 else 0.0,
        "rewards/rejected": rejected.mean().item(),
        "rewards/rejected_std": rejected.std().item() if len(rejected) > 1 else 0.0,
    }


def run(cfg: RewardStage, ctx: StageContext) -> StageResult:
    import torch

    from rlft.comparisons import calibration
    from rlft.distributed import gathered_model
    from rlft.models.tuning import save_model

    trainer, info = make_trainer(cfg, ctx, callbacks=training_callbacks(cfg, ctx))
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)
    step = trainer.state.global_step

    metrics: dict[str, Any] = {"train/global_step": step}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["train/loss"] = losses[-1]

    # Normalisation statistics over the training responses (chosen and rejected alike).
    chosen, rejected = pair_rewards(trainer, trainer.train_dataset, max_rows=cfg.stats_rows)
    both = torch.cat([chosen, rejected])
    stats = {"mean": both.mean().item(), "std": both.std().item(), "n": len(both)}
    metrics["train/accuracy"] = (chosen > rejected).float().mean().item()

    if trainer.eval_dataset is not None:
        metrics["eval/loss"] = trainer.evaluate()["eval_loss"]
        held_chosen, held_rejected = pair_rewards(trainer, trainer.eval_dataset)
        held_out = pair_metrics(held_chosen, held_rejected)
        metrics.update(held_out)
        metrics["reward_accuracy"] = held_out["rewards/accuracies"]
        # P(chosen preferred) = σ(margin): is it right as often as it is sure? (`rlft eval` shows the table)
        calibrated = calibration((held_chosen - held_rejected).tolist())
        metrics["eval/rewards/ece"] = calibrated.ece
        info["calibration"] = calibrated.as_dict()
        ctx.tracker.log(
            {k: v for k, v in metrics.items() if "/" in k and not k.startswith("train/")}, step=step
        )
        ctx.log(
            f"held-out pairwise accuracy {held_out['rewards/accuracies']:.3f}, mean margin {held_out['rewards/margins']:.3f} "
            f"(chosen {held_out['rewards/chosen']:.3f} ± {held_out['rewards/chosen_std']:.3f}, "
            f"rejected {held_out['rewards/rejected']:.3f} ± {held_out['rewards/rejected_std']:.3f})"
        )
    else:
        logger.warning(
            "no eval pairs (set data.eval or data.eval_fraction): accuracy is on training pairs only"
        )

    rank = rank_summary(trainer)  # before saving: merging LoRA changes the weights in place
    model = gathered_model(trainer)  # whole on the main process, also under ZeRO-3/FSDP
    if model is not None:
        info["saved"] = save_model(model, trainer.processing_class, ctx.artifact_dir)
        (ctx.artifact_dir / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    info["reward_stats"] = stats
    return StageResult(metrics=metrics, info=info, rank=rank)
