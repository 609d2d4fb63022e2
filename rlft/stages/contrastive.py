"""`kind: contrastive`: contrastive objectives, without a reference model. `mode:` picks one of two.

**preference**: the policy learns from preference pairs (prompt, chosen, rejected) by comparing its
own log-likelihoods of the two answers, with no frozen reference to run (rlft/losses.py):
`cpo` (Xu et al., 2024): -log σ(β (log π(y_w|x) - log π(y_l|x))), plus `cpo_alpha` x the NLL of
the chosen answers; `simpo` (Meng et al., 2024): the same on per-token mean log-likelihoods with a
target margin γ (`simpo_gamma`; SimPO as published has `cpo_alpha: 0`). Trained on TRL's
`trl.experimental.cpo.CPOTrainer` (`trainer:` passes through to its CPOConfig). Chains like DPO
(`model: {from: sft}`) and measures held-out preference accuracy and the pipeline's task reward.

**representation**: InfoNCE over rows of (anchor, positive[, negative]) strings (rlft/embeddings.py):
each anchor picks its positive among the batch's positives (in-batch negatives) and hard negatives,
on cosine similarities of pooled last hidden states (`pooling: mean | last_token`), temperature
fixed or learned, one-way (SimCSE) or symmetric (CLIP). The model is a causal LM (its decoder's
states; the whole LM is saved, so a reward stage can start `{from: <this stage>}`) or an encoder
(`AutoModel`). Trained on transformers' Trainer with rlft's loss (`trainer:` passes through to
TrainingArguments); retrieval accuracy@1 and MRR of the eval anchors against all eval positives
are measured before and after. `rlft.embed(artifact, texts)` gives the vectors back.

    setup: model + tokenizer (+ tuning) -> data -> CPOConfig / TrainingArguments -> trainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder (adapters merged) + task reward | + embedding.json and retrieval metrics
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlft.data import DataConfig
from rlft.errors import ConfigError, DataError
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    Policy,
    as_explicit_preferences,
    build_trainer_args,
    finish_policy_stage,
    load_data,
    load_policy,
    rank_summary,
    report_data,
    save_policy,
    training_callbacks,
)

Mode = Literal["preference", "representation"]
FORMATS = {"preference": ("preference", "implicit_preference"), "representation": ("contrastive",)}
FORMAT_HINT = {
    "preference": "mode: preference trains on preference pairs (prompt, chosen, rejected); "
    "rows of anchor, positive[, negative] are for mode: representation",
    "representation": "mode: representation trains on rows of anchor, positive[, negative] (strings); "
    "preference pairs (prompt, chosen, rejected) are for mode: preference",
}
# Keys that only one mode reads: given (away from their default) in the other mode, they are an error.
MODE_KEYS = {
    "preference": ("loss_type", "beta", "cpo_alpha", "simpo_gamma"),
    "representation": ("pooling", "temperature", "learn_temperature", "symmetric"),
}
# rlft's loss names -> CPOConfig.loss_type
TRL_LOSS = {"cpo": "sigmoid", "simpo": "simpo"}
# Stage keys that set CPOConfig fields: given on the stage, not in `trainer:`.
STAGE_KEYS = ("loss_type", "beta", "cpo_alpha", "simpo_gamma", "max_length")
TRAIN_METRICS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "nll_loss")
CPO_CONFIG = "trl.experimental.cpo.cpo_config:CPOConfig"
PROMPT_TUNING_REFUSED = (
    "tuning.method prompt_tuning: in preference mode, TRL's CPOTrainer reads the logits of the virtual tokens "
    "as the answer's (its logits and labels no longer line up); use prefix_tuning, lora, dora, adapter, freeze or full"
)
TRAINING_ARGUMENTS = "transformers.training_args:TrainingArguments"


class ContrastiveStage(TrainerStage):
    """Contrastive objectives without a reference model: CPO/SimPO on preference pairs, or InfoNCE embeddings."""

    kind: Literal["contrastive"] = Field(
        "contrastive", description="contrastive objectives, no reference model: `mode` picks one"
    )
    mode: Mode = Field(
        description="preference: CPO or SimPO on (prompt, chosen, rejected) pairs; representation: InfoNCE "
        "embeddings from (anchor, positive[, negative]) rows"
    )
    data: DataConfig = Field(
        description="preference mode: pairs (prompt, chosen, rejected; an implicit prompt is split off); "
        "representation mode: anchor, positive and optional negative strings"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or "
        "prefix_tuning (preference mode: not prompt_tuning; representation mode: neither prompt method)",
    )
    trainer: dict[str, Any] = Field(
        {},
        description="preference mode: passes through to TRL's experimental CPOConfig; representation mode: to "
        "transformers' TrainingArguments (CPOConfig's own keys refused); keys are checked",
    )
    loss_type: Literal["cpo", "simpo"] = Field(
        "cpo",
        description="preference mode: cpo (sigmoid on the log-likelihood margin) or simpo (length-normalised, "
        "target margin simpo_gamma)",
    )
    beta: float = Field(
        0.1, gt=0, description="preference mode: scale of the log-likelihood margin (SimPO's paper: 2 to 10)"
    )
    cpo_alpha: float = Field(
        1.0,
        ge=0,
        description="preference mode: weight of the NLL of the chosen answers (1: CPO; 0 with simpo: SimPO as "
        "published); keeps the chosen answers likely while the margin grows",
    )
    simpo_gamma: float = Field(
        0.5,
        ge=0,
        description="preference mode, simpo: target reward margin γ (higher: pairs must separate more)",
    )
    pooling: Literal["mean", "last_token"] = Field(
        "mean",
        description="representation mode: a text's vector is the mean of its last hidden states, or the state "
        "of its last token (a causal LM then appends eos to every text)",
    )
    temperature: float = Field(
        0.05,
        gt=0,
        le=1,
        description="representation mode: InfoNCE temperature τ (lower: a sharper softmax over the batch); "
        "the starting value when learned",
    )
    learn_temperature: bool = Field(False, description="representation mode: learn τ with the model (CLIP)")
    symmetric: bool = Field(
        False,
        description="representation mode: also classify each positive's anchor (CLIP's symmetric loss); "
        "false: anchors to positives only (SimCSE)",
    )
    max_length: int | None = Field(
        1024,
        gt=0,
        description="preference mode: prompt + answer tokens; representation mode: tokens per text; "
        "longer ones are cut at the end",
    )
    evaluate: bool = Field(
        True,
        description="measure the pipeline's task reward after training (representation mode: of the causal LM "
        "it saves; an encoder has none)",
    )

    trainer_config_class = CPO_CONFIG
    uses_task_eval = True

    @model_validator(mode="after")
    def _consistent(self) -> ContrastiveStage:
        fields = type(self).model_fields
        other = "representation" if self.mode == "preference" else "preference"
        for key in MODE_KEYS[other]:
            if getattr(self, key) != fields[key].default:
                raise ValueError(f"{key} is a {other}-mode key; this stage has mode: {self.mode}")
        for key in STAGE_KEYS:
            if key in self.trainer:
                raise ValueError(f"trainer.{key}: set {key} on the stage itself, not in trainer")
        if self.mode == "preference" and self.tuning.method == "prompt_tuning":
            raise ValueError(PROMPT_TUNING_REFUSED)
        if self.mode == "representation":
            from rlft.trainer_fields import config_fields

            cpo_only = sorted(
                set(self.trainer) & (config_fields(CPO_CONFIG) - config_fields(TRAINING_ARGUMENTS))
            )
            if cpo_only:
                raise ValueError(
                    f"trainer.{cpo_only[0]}: a CPOConfig key (preference mode); representation mode passes "
                    "trainer: to transformers' TrainingArguments"
                )
            if "remove_unused_columns" in self.trainer:
                raise ValueError(
                    "trainer.remove_unused_columns: set by rlft (the texts are tokenized per batch)"
                )
            if self.tuning.method in ("prompt_tuning", "prefix_tuning"):
                raise ValueError(
                    f"tuning.method {self.tuning.method}: representation mode pools the hidden states of the "
                    "text's own tokens; train the weights instead (full, freeze, lora, dora, adapter)"
                )
        return self


def run(cfg: ContrastiveStage, ctx: StageContext) -> StageResult:
    return RUN[cfg.mode](cfg, ctx)


def load_mode_data(cfg: ContrastiveStage, ctx: StageContext, tokenizer: Any) -> Any:
    """The stage's data in its mode's formats; data of the other mode's shape is told which mode takes it."""
    try:
        return load_data(cfg, ctx, formats=FORMATS[cfg.mode], tokenizer=tokenizer)
    except DataError as e:
        if "formats this stage accepts" not in str(e):
            raise
        raise DataError(f"{e}\n{FORMAT_HINT[cfg.mode]}") from None


def final_evaluation(trainer: Any, key: str) -> dict[str, float]:
    """The held-out metrics of the trained model (rlft's names): those the trainer logged at its last
    step when it evaluated there (`key` among them), else a fresh evaluation."""
    from rlft.tracking import namespaced

    step = trainer.state.global_step
    last = {
        k: v for entry in trainer.state.log_history if entry.get("step") == step for k, v in entry.items()
    }
    return namespaced(last if key in last else trainer.evaluate())


# --- mode: preference -------------------------------------------------------------------------


def make_preference_trainer(
    cfg: ContrastiveStage, ctx: StageContext, *, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`: model, tokenizer, tuning, pairs, CPOConfig, CPOTrainer."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    policy = load_policy(cfg, ctx)
    peft_config = getattr(policy.model, "active_peft_config", None)
    if peft_config is not None and peft_config.peft_type.value == "PROMPT_TUNING":  # kept by the start
        raise ConfigError(
            f"stages.{cfg.name}.model: the starting model carries a learned prompt; {PROMPT_TUNING_REFUSED}"
        )
    data = as_explicit_preferences(load_mode_data(cfg, ctx, policy.tokenizer), cfg, ctx)
    n_eval = len(data.eval) if data.eval is not None else 0
    ctx.log(f"data: {len(data.train)} train pairs, {n_eval} eval pairs; no reference model ({cfg.loss_type})")
    settings = {
        "loss_type": TRL_LOSS[cfg.loss_type],
        "beta": cfg.beta,
        "cpo_alpha": cfg.cpo_alpha,
        "simpo_gamma": cfg.simpo_gamma,
        "max_length": cfg.max_length,
        "remove_unused_columns": False,  # CPOTrainer's collator reads the text columns
    }
    args = build_trainer_args(CPOConfig, cfg, ctx, has_eval=data.eval is not None, defaults=settings)
    report_data(data, tokenizer=policy.tokenizer, ctx=ctx, max_length=args.max_length)
    columns = ["prompt", "chosen", "rejected"]  # CPOTrainer's collator would choke on extra columns
    trainer = CPOTrainer(
        model=policy.model,
        args=args,
        train_dataset=data.train.select_columns(columns),
        eval_dataset=data.eval.select_columns(columns) if data.eval is not None else None,
        processing_class=policy.tokenizer,
        callbacks=[*(callbacks or []), *policy.callbacks],
    )
    return trainer, {**policy.info, "data": data.report}


def run_preference(cfg: ContrastiveStage, ctx: StageContext) -> StageResult:
    from rlft.tracking import namespaced

    trainer, info = make_preference_trainer(cfg, ctx, callbacks=training_callbacks(cfg, ctx))
    metrics: dict[str, Any] = {}
    if trainer.eval_dataset is not None and not ctx.resume_from:
        # Unlike DPO's (0.5 at the start by construction), the starting model's own preference is informative.
        before = namespaced(trainer.evaluate())
        metrics["eval/rewards/accuracies_before"] = before["eval/rewards/accuracies"]
        ctx.log(
            f"held-out pairs before training: chosen more likely in {before['eval/rewards/accuracies']:.3f}"
        )
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics["train/global_step"] = trainer.state.global_step
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        metrics["train/loss"] = logged[-1]["loss"]
        metrics.update(
            {f"train/{k}" if "/" not in k else k: logged[-1][k] for k in TRAIN_METRICS if k in logged[-1]}
        )
    if trainer.eval_dataset is not None:
        held_out = final_evaluation(trainer, "eval_rewards/accuracies")
        metrics.update(
            {k: held_out[k] for k in ("eval/loss", *(f"eval/{k}" for k in TRAIN_METRICS)) if k in held_out}
        )
        ctx.log(
            f"held-out pairs: chosen more likely than rejected in {held_out['eval/rewards/accuracies']:.3f}, "
            f"margin {held_out['eval/rewards/margins']:.3f} (β x log-likelihood), loss {held_out['eval/loss']:.4f}"
        )
    return finish_policy_stage(cfg, ctx, trainer, metrics=metrics, info=info)


# --- mode: representation ---------------------------------------------------------------------


def load_start(cfg: ContrastiveStage, ctx: StageContext) -> tuple[Policy, bool]:
    """The starting model, tuned, and whether it is a causal LM (else an encoder, loaded with AutoModel)."""
    from rlft.models.loading import is_causal_lm, load_causal_lm, load_tokenizer, resolve_source
    from rlft.models.tuning import apply_tuning, count_parameters, describe_parameters, gradual_unfreezing

    resolved = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    if is_causal_lm(resolved):
        policy = load_policy(cfg, ctx, resolved=resolved)
        if policy.info.get("start_keeps_prompt"):
            raise ConfigError(
                f"stages.{cfg.name}.model: {resolved.description} keeps a learned prompt (prompt/prefix tuning), "
                "which representation mode cannot pool (its virtual tokens are not the text's); start from a model without one"
            )
        return policy, True
    ctx.log(f"model: {resolved.description} (an encoder: AutoModel)")
    tokenizer, fixups = load_tokenizer(resolved)
    model = load_causal_lm(
        resolved, dtype=cfg.model.dtype, tokenizer=tokenizer, auto_class="AutoModel", log=ctx.log
    )
    model = apply_tuning(model, cfg.tuning, task_type="FEATURE_EXTRACTION", tokenizer=tokenizer)
    params = count_parameters(model)
    ctx.log(describe_parameters(cfg.tuning, params))
    info = {"parameters": params, "tokenizer_fixups": fixups, "model": resolved.description}
    return Policy(model, model, tokenizer, gradual_unfreezing(model, cfg.tuning, log=ctx.log), info), False


def run_representation(cfg: ContrastiveStage, ctx: StageContext) -> StageResult:
    from transformers import TrainingArguments

    from rlft.distributed import gathered_submodule
    from rlft.embeddings import (
        Embedder,
        PairCollator,
        contrastive_trainer,
        encode,
        retrieval_metrics,
        write_embedding_config,
    )
    from rlft.models.tuning import save_model

    policy, causal = load_start(cfg, ctx)
    tokenizer = policy.tokenizer
    data = load_mode_data(cfg, ctx, tokenizer)
    hard = "negative" in data.train.column_names
    ctx.log(
        f"data: {len(data.train)} train rows ({'with' if hard else 'no'} hard negatives), "
        f"{len(data.eval) if data.eval is not None else 0} eval rows"
    )
    report_data(data, tokenizer, ctx, max_length=cfg.max_length)
    append_eos = causal and cfg.pooling == "last_token"
    embedder = Embedder(
        policy.model,
        pooling=cfg.pooling,
        temperature=cfg.temperature,
        learn_temperature=cfg.learn_temperature,
    )
    text = {"max_length": cfg.max_length, "append_eos": append_eos}

    def measure(model: Any) -> dict[str, float]:
        anchors = encode(model, tokenizer, data.eval["anchor"], **text)
        found = retrieval_metrics(anchors, encode(model, tokenizer, data.eval["positive"], **text))
        return {f"retrieval/{k}": v for k, v in found.items()}

    metrics: dict[str, Any] = {}
    if data.eval is not None:
        before = measure(embedder)
        metrics.update({f"{k}_before": v for k, v in before.items()})
        ctx.tracker.log({f"{k}_before": v for k, v in before.items()}, step=0)
        ctx.log(
            f"retrieval before training: accuracy@1 {before['retrieval/accuracy@1']:.3f}, MRR {before['retrieval/mrr']:.3f}"
        )
    else:
        ctx.log("no eval rows (data.eval or data.eval_fraction): retrieval is not measured")

    # the collator reads the text columns; full batches give every anchor B-1 in-batch negatives
    defaults = {"remove_unused_columns": False, "dataloader_drop_last": True}
    args = build_trainer_args(TrainingArguments, cfg, ctx, has_eval=data.eval is not None, defaults=defaults)
    trainer = contrastive_trainer(
        symmetric=cfg.symmetric,
        measure=measure if data.eval is not None else None,
        model=embedder,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=PairCollator(tokenizer, **text),
        processing_class=tokenizer,
        callbacks=[*training_callbacks(cfg, ctx), *policy.callbacks],
    )
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics["train/global_step"] = trainer.state.global_step
    losses = [h for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["train/loss"] = losses[-1]["loss"]
    final_temperature = (
        1 / trainer.accelerator.unwrap_model(trainer.model).log_scale.exp().clamp(max=100).item()
    )
    metrics["train/temperature"] = final_temperature
    if data.eval is not None:
        held_out = final_evaluation(trainer, "retrieval/accuracy@1")
        metrics.update({k: held_out[k] for k in ("eval/loss", "retrieval/accuracy@1", "retrieval/mrr")})
        ctx.log(
            f"retrieval after training: accuracy@1 {held_out['retrieval/accuracy@1']:.3f}, "
            f"MRR {held_out['retrieval/mrr']:.3f} (before: {metrics['retrieval/accuracy@1_before']:.3f}, "
            f"{metrics['retrieval/mrr_before']:.3f})"
        )

    info = {**policy.info, "data": data.report, "backbone": "causal_lm" if causal else "encoder"}
    rank = rank_summary(trainer)  # before saving: merging LoRA changes the weights in place
    # the model inside the Embedder, whole on the main process (gathered under ZeRO-3/FSDP), None elsewhere
    model = gathered_submodule(trainer.accelerator, trainer.model_wrapped, "model")
    if model is not None:
        if causal:
            save_policy(
                model, tokenizer, cfg, ctx, metrics=metrics, info=info, step=trainer.state.global_step
            )
        else:
            info["saved"] = save_model(model, tokenizer, ctx.artifact_dir)
        settings = {
            "pooling": cfg.pooling,
            "append_eos": append_eos,
            "max_length": cfg.max_length,
            "backbone": info["backbone"],
            "normalized": True,  # trained on cosine similarity: compare normalised vectors
            "temperature": final_temperature,
        }
        write_embedding_config(ctx.artifact_dir, settings)
    return StageResult(metrics=metrics, info=info, rank=rank)


RUN = {"preference": run_preference, "representation": run_representation}
