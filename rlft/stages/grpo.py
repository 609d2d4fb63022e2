"""`kind: grpo`: Group Relative Policy Optimization on TRL's GRPOTrainer (critic-free online RL).

For each prompt the policy samples `num_generations` completions; each completion's advantage
is its reward minus the group's mean (divided by the group's std, `scale_rewards`), so no value
model is needed (Shao et al. 2024, DeepSeekMath, sec. 4.1). `beta` > 0 adds a KL penalty to the
frozen starting model (TRL's default: 0, no reference loaded).

Rewards come from `reward_models` exactly as for PPO: `reward: {from: reward}`, a function, or a
weighted sum. A sum is handed to TRL as one reward function per part with `reward_weights`, so
TRL logs each part (`rewards/<name>/mean`); the parts are plain callables
(`reward_models.CompositeReward`), never raw HF models, so a reward model scores with its own
tokenizer. Prompts: prompt-only data (any rows with a `prompt`; other columns, e.g. `answer`,
reach the reward functions as keyword arguments).

    setup: model + tokenizer (+ tuning) -> prompts -> reward functions -> GRPOConfig -> GRPOTrainer
    train: trainer.train(resume_from_checkpoint=<last checkpoint of a run that died>)
    save:  plain HF folder (adapters merged) + task reward of greedy generations

`kind: rloo` (rlft/stages/rloo.py) is the same stage on TRL's RLOOTrainer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rlft.data import DataConfig
from rlft.errors import ConfigError
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.rewards import RewardSpec
from rlft.stages.base import StageContext, StageResult, TrainerStage
from rlft.stages.common import (
    build_reward_fn,
    build_trainer_args,
    finish_policy_stage,
    load_data,
    load_policy,
    report_data,
    training_callbacks,
)

# Logged by TRL's GRPO/RLOO trainers (names after rlft.tracking.namespaced), kept in the summary.
FINAL_METRICS = ("train/loss", "train/reward", "train/reward_std", "train/kl", "train/entropy")
FINAL_METRICS += ("completions/mean_length", "completions/clipped_ratio")


class GRPOStage(TrainerStage):
    """Group Relative Policy Optimization on TRL's GRPOTrainer: group-normalised rewards, no critic."""

    kind: Literal["grpo"] = Field(
        "grpo", description="Group Relative Policy Optimization on TRL's GRPOTrainer (critic-free online RL)"
    )
    data: DataConfig = Field(
        description="prompts: rows with a `prompt` (other columns, e.g. `answer`, reach the reward functions)"
    )
    reward: RewardSpec = Field(
        description="what scores the completions: {from: STAGE}, {path: DIR}, {function: module:fn} or "
        "{sum: [...]} (see rlft/rewards.py)"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or prefix_tuning",
    )
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    trainer_config_class = "trl.trainer.grpo_config:GRPOConfig"
    uses_task_eval = True

    @model_validator(mode="after")
    def _weights_in_reward(self) -> GRPOStage:
        if "reward_weights" in self.trainer:
            raise ValueError("trainer.reward_weights: give each part's weight in reward.sum instead")
        return self

    def references(self) -> list[tuple[str, str]]:
        return super().references() + [("reward", name) for name in self.reward.references()]


def reward_functions(cfg: Any, ctx: StageContext) -> tuple[list[Any], list[float] | None]:
    """(reward_funcs, reward_weights) for TRL: one callable per part of the reward, and their weights
    (None for a single reward, whose weight is applied inside it)."""
    from reward_models import CompositeReward
    from reward_models.composite import Component

    reward = build_reward_fn(cfg, ctx)
    if len(reward.components) == 1:  # named after its one part, as TRL's logs show it (rewards/<name>/mean)
        return [CompositeReward(reward.components, name=reward.components[0].name)], None
    parts = [CompositeReward([Component(c.name, 1.0, c.fn)], name=c.name) for c in reward.components]
    return parts, [c.weight for c in reward.components]


def make_trainer(
    cfg: Any, ctx: StageContext, *, trainer_class: Any, config_class: Any, callbacks: list | None = None
) -> tuple[Any, dict[str, Any]]:
    """Everything up to `trainer.train()`, for GRPO (GRPOTrainer, GRPOConfig) or RLOO (RLOOTrainer, RLOOConfig)."""

    policy = load_policy(cfg, ctx)
    model, tokenizer = policy.model, policy.tokenizer
    callbacks = [*(callbacks or []), *policy.callbacks]
    data = load_data(cfg, ctx, formats=("prompt_only",), tokenizer=tokenizer)
    ctx.log(f"data: {len(data.train)} prompts ({data.report['style']})")
    funcs, weights = reward_functions(cfg, ctx)
    ctx.log(f"reward: {', '.join(f.__name__ for f in funcs)}" + (f" weighted {weights}" if weights else ""))
    args = build_trainer_args(
        config_class, cfg, ctx, has_eval=False, defaults={"reward_weights": weights} if weights else {}
    )
    if policy.info.get("start_keeps_prompt") and args.beta != 0:
        raise ConfigError(
            f"stages.{cfg.name}: the starting model keeps a learned prompt (prompt/prefix tuning), and TRL takes a "
            f"peft policy's reference as the policy with its adapter disabled, which drops that prompt: the KL "
            f"(beta {args.beta}) would not be to the starting model. Set trainer.beta: 0, or start from a merged artifact"
        )
    report_data(data, tokenizer, ctx, max_length=None)
    trainer = trainer_class(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=data.train,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    info = {
        **policy.info,
        "data": data.report,
    }
    return trainer, info


def run_online(cfg: Any, ctx: StageContext, *, trainer_class: Any, config_class: Any) -> StageResult:
    """Train, then save the policy and measure the task reward (shared by GRPO and RLOO)."""
    from rlft.tracking import namespaced

    trainer, info = make_trainer(
        cfg,
        ctx,
        trainer_class=trainer_class,
        config_class=config_class,
        callbacks=training_callbacks(cfg, ctx),
    )
    if ctx.resume_from:
        ctx.log(f"resuming from {ctx.resume_from}")
    trainer.train(resume_from_checkpoint=ctx.resume_from)

    metrics: dict[str, Any] = {"train/global_step": trainer.state.global_step}
    logged = [namespaced(h) for h in trainer.state.log_history if "loss" in h]
    if logged:
        metrics.update({k: logged[-1][k] for k in FINAL_METRICS if k in logged[-1]})
        if "train/kl" in logged[-1]:
            metrics["kl"] = logged[-1][
                "train/kl"
            ]  # the final KL from the reference (beta > 0), for summary.json
    return finish_policy_stage(cfg, ctx, trainer, metrics=metrics, info=info)


def run(cfg: GRPOStage, ctx: StageContext) -> StageResult:
    from trl import GRPOConfig, GRPOTrainer

    return run_online(cfg, ctx, trainer_class=GRPOTrainer, config_class=GRPOConfig)
