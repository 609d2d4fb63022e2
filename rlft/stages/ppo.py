"""`kind: ppo`: RLHF with PPO (rlft's own loop, on accelerate): actor, critic, reference, reward.

Follows "The N+ Implementation Details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031,
sec. 7 and its reference code) with the KL-penalised reward of Ziegler et al. 2019. Each step:

    prompts (a rollout batch) -> sample responses at `temperature`, stop at EOS      rlft.rl.rollout
    -> score the text with the reward (a reward model, a function, or a weighted sum)
    -> log-probs of policy and reference, critic values
    -> reward = score at the last token - beta * KL per token (k1/k3); missing-EOS penalty
    -> GAE (gamma, lam) -> whitened advantages                                       rlft.rl.experience
    -> ppo_epochs x minibatches: clipped policy loss + vf_coef * clipped value loss
       - entropy_coef * entropy, gradient accumulation                               rlft.rl.update
    -> KL controller: fixed beta, or adapted to a target KL (Ziegler et al. 2019)    rlft.rl.kl_controller

Roles (rlft.rl.critic): the policy trains under any tuning strategy; the critic, by
`critic_design`, is a separate model with a scalar head per token, initialised from the reward
model (Huang et al.) or the policy (`separate`, fully trained; `lora`, trained through LoRA
adapters and its head), or a value head on the policy's own last hidden states (`shared`: one
pass of the trunk gives logits and values); the reference is frozen: the starting model, or,
with LoRA-style tuning, the policy with its adapters disabled (no second copy). Policy and critic
train as one module with one optimizer (a param group each). The reward model scores decoded
text with its own tokenizer.

Cost (rlft.rl.perf): each step logs its FLOPs by phase (sample, score, the no-grad forward
passes, train), the seconds of each, and the model-FLOPs utilisation against a matmul rate timed
at start-up (or `peak_flops`): perf/flops_per_step, perf/mfu, perf/{flops,seconds,mfu}/<phase>.

    setup: accelerator -> reward -> policy (+ tuning) -> reference -> critic -> prompts -> optimizer
    loop:  rollout -> experience -> PPO update -> KL controller -> metrics (ppo/*), samples, checkpoints
    save:  plain HF folder of the policy (adapters merged) + task reward of greedy generations
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import Field, model_validator

from rlft.config import ModelSource, Strict
from rlft.data import DataConfig
from rlft.models.tuning import FullTuning, LoraTuning, TuningConfig
from rlft.rewards import RewardSpec
from rlft.stages.base import StageBase, StageContext, StageResult
from rlft.stages.common import (
    build_reward_fn,
    check_disk_space,
    load_data,
    load_policy,
    report_data,
    save_policy,
)


class AdaptiveKL(Strict):
    """beta moves towards a target KL (Ziegler et al. 2019, sec. 2.2; rlft.rl.kl_controller)."""

    target: float = Field(
        6.0, gt=0, description="response KL (nats) to hold: lower keeps the policy closer to the reference"
    )
    horizon: int = Field(
        10_000,
        gt=0,
        description="episodes for beta to move ~20% at a steady 20% error: lower adapts faster",
    )


class PPOStage(StageBase):
    """rlft's own PPO on accelerate: actor, critic, frozen reference and a reward from `reward_models`."""

    kind: Literal["ppo"] = Field(
        "ppo", description="PPO with a critic, rlft's own loop on accelerate (Huang et al. 2024 defaults)"
    )
    data: DataConfig = Field(
        description="prompts: rows with a `prompt` (other columns, e.g. `answer`, reach the reward as fields)"
    )
    reward: RewardSpec = Field(
        description="what scores the responses: {from: STAGE}, {path: DIR}, {function: module:fn} or "
        "{sum: [...]} (see rlft/rewards.py)"
    )
    reference: ModelSource | None = Field(
        None, description="the frozen reference; None: the starting model (LoRA: adapters disabled)"
    )
    critic: ModelSource | None = Field(
        None, description="the critic's starting weights; None: chosen by critic_init"
    )
    critic_init: Literal["auto", "reward", "policy"] = Field(
        "auto",
        description="where the critic starts when `critic` is not given: reward (the reward model), policy (the "
        "starting model), auto (the reward model if it reads the policy's tokens, else the policy)",
    )
    critic_design: Literal["separate", "shared", "lora"] = Field(
        "separate",
        description="separate: its own model, fully trained (Huang et al.); shared: a value head on the policy's "
        "own forward (one trunk pass serves both, the value loss trains the trunk too: cheapest); lora: its own "
        "model, trained through LoRA adapters and a full head (less optimizer memory, same passes)",
    )
    critic_lora: LoraTuning | None = Field(
        None,
        description="the critic's adapters with critic_design: lora (method lora/dora, r, alpha, target_modules, "
        "use_rslora; no dropout); None: LoRA r 16, alpha 32 on all linear layers",
    )
    peak_flops: float | None = Field(
        None,
        gt=0,
        description="matmul rate in FLOP/s per process that perf/mfu is measured against (e.g. 989e12 for an "
        "H100's dense bf16); None: timed at start-up on a square matmul in the policy's dtype (~0.2 s)",
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which policy parameters train (the critic's: critic_design): method full, freeze, lora, dora, "
        "adapter, prompt_tuning or prefix_tuning",
    )

    # length of the run: give one
    steps: int | None = Field(
        None, gt=0, description="PPO updates, one rollout batch each (give this or total_episodes)"
    )
    total_episodes: int | None = Field(
        None, gt=0, description="prompts rolled out in all, all processes (give this or steps)"
    )
    # rollouts
    rollout_batch_size: int = Field(64, gt=0, description="prompts per rollout, per process")
    minibatch_size: int = Field(
        16,
        gt=0,
        description="rollouts per optimizer step, per process; divides rollout_batch_size (smaller: more steps)",
    )
    gradient_accumulation_steps: int = Field(
        1, gt=0, description="micro-batches per minibatch: more = less memory, same step"
    )
    forward_batch_size: int | None = Field(
        None, gt=0, description="rollouts per no-grad forward (lower: less memory); None: minibatch_size"
    )
    max_new_tokens: int = Field(
        64, gt=0, description="response length limit; longer responses are cut (no EOS)"
    )
    max_prompt_length: int | None = Field(
        512, gt=0, description="prompt tokens; longer prompts keep their last tokens; None: no limit"
    )
    temperature: float = Field(
        0.7,
        gt=0,
        description="sampling temperature, also applied to every log-prob: higher explores more",
    )
    # PPO (defaults: Huang et al. 2024)
    ppo_epochs: int = Field(
        4,
        gt=0,
        description="passes over each rollout batch: more = more learning per rollout, further off-policy",
    )
    learning_rate: float = Field(3e-6, gt=0, description="policy learning rate")
    critic_learning_rate: float | None = Field(
        None,
        gt=0,
        description="critic learning rate (critic_design shared: the value head's; the trunk trains at "
        "learning_rate); None: learning_rate",
    )
    lr_schedule: Literal["linear", "constant"] = Field(
        "linear", description="linear: decays to 0 over the run (Huang et al.); constant: no decay"
    )
    adam_eps: float = Field(1e-5, gt=0, description="Adam epsilon (Huang et al.: 1e-5, not PyTorch's 1e-8)")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm; None: off")
    gamma: float = Field(
        1.0, ge=0, le=1, description="discount: 1 = the final score counts fully at every token"
    )
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda: lower = less variance, more bias")
    cliprange: float = Field(0.2, gt=0, description="policy ratio clip: lower = smaller, safer updates")
    cliprange_value: float | None = Field(
        0.2, gt=0, description="value clip around the rollout's values: lower = slower critic; None: off"
    )
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss in the total loss")
    entropy_coef: float = Field(0.0, ge=0, description="entropy bonus: higher keeps sampling diverse")
    # KL penalty
    beta: float = Field(
        0.05,
        ge=0,
        description="KL coefficient (the start when adaptive): higher stays nearer the reference",
    )
    adaptive_kl: AdaptiveKL | None = Field(
        None,
        description="{target, horizon}: adapt beta towards a target KL (Ziegler et al.); None: fixed beta",
    )
    kl_estimator: Literal["k1", "k3", "abs", "mse"] = Field(
        "k1", description="per-token KL estimate (Schulman's k1, k3, |log r|, k2; rlft.rl.core.kl_penalty)"
    )
    whiten_rewards: bool = Field(
        False, description="scale the per-token rewards to unit variance (keeps their mean)"
    )
    missing_eos_penalty: float | None = Field(
        None,
        ge=0,
        description="subtracted from the score of a response without EOS: higher pushes towards finishing",
    )
    # bookkeeping
    save_steps: int = Field(
        50, gt=0, description="checkpoint every N steps (a stage that died resumes there)"
    )
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept; None: all")
    sample_every: int = Field(10, gt=0, description="log a table of sample generations every N steps")
    num_samples: int = Field(4, gt=0, description="rows in that table")
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    uses_task_eval = True

    @model_validator(mode="after")
    def _consistent(self) -> PPOStage:
        if (self.steps is None) == (self.total_episodes is None):
            raise ValueError(
                "give exactly one of steps (PPO updates) and total_episodes (prompts rolled out)"
            )
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} must be a multiple of minibatch_size {self.minibatch_size}"
            )
        self._check_critic_design()
        if self.minibatch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"minibatch_size {self.minibatch_size} must be a multiple of gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}"
            )
        return self

    def _check_critic_design(self) -> None:
        """Combinations that cannot mean anything: say which field, and what to do instead."""
        if self.critic_design == "shared" and self.critic is not None:
            raise ValueError(
                "critic: a shared critic (critic_design: shared) is a value head on the policy's own forward and "
                "has no model to start from; remove critic:, or use critic_design: separate or lora"
            )
        if self.critic_design == "shared" and self.critic_init == "reward":
            raise ValueError(
                "critic_init: reward cannot start a shared critic (critic_design: shared), whose trunk is the "
                "policy's; use critic_init: auto, or critic_design: separate or lora to start from the reward model"
            )
        if self.critic_lora is not None and self.critic_design != "lora":
            raise ValueError(
                f"critic_lora is set but critic_design is {self.critic_design}; set critic_design: lora, or "
                "remove critic_lora"
            )

    def references(self) -> list[tuple[str, str]]:
        return super().references() + [("reward", name) for name in self.reward.references()]

    def total_steps(self, world_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return math.ceil(self.total_episodes / (self.rollout_batch_size * world_size))


def run(cfg: PPOStage, ctx: StageContext) -> StageResult:
    import torch
    from accelerate.utils import DistributedType, set_seed

    from rlft.models.loading import resolve_source
    from rlft.rl.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from rlft.rl.critic import ActorCritic, SharedActorCritic, disable_dropout, shared_value_head
    from rlft.rl.metrics import mean_over_processes, sample_rows, step_metrics, weights_checksum
    from rlft.rl.perf import ForwardCounter, PhaseTimer, ppo_step_flops, reward_models_of, step_perf
    from rlft.rl.rollout import (
        PromptSampler,
        decode_responses,
        encode_prompts,
        experience_from_rollout,
        generation_model,
        left_pad,
        sample_responses,
        score_responses,
    )
    from rlft.rl.update import make_optimizer, ppo_update

    # --- setup ------------------------------------------------------------------------------
    # Before the accelerator: under ZeRO-3 it would partition the reward model as it loads, and once
    # torch.distributed is up, `save_pretrained` writes nothing on ranks > 0, so a tiny model that
    # rank 1 happened to build would be an empty folder. Resolving the policy's source builds it.
    reward_fn = build_reward_fn(cfg, ctx)
    source = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    loaded = load_policy(cfg, ctx, resolved=source)
    policy, tokenizer, info, unfreezing = loaded.model, loaded.tokenizer, loaded.info, loaded.unfreezing
    disable_dropout(policy)
    reference, adapters_off, info["reference"] = load_reference(cfg, ctx, policy=policy, tokenizer=tokenizer)
    if cfg.critic_design == "shared":
        model = SharedActorCritic(policy, shared_value_head(policy))
        info["critic"] = "a value head on the policy's own forward (shared trunk, fresh head)"
    else:
        critic, info["critic"] = load_critic(cfg, ctx, tokenizer=tokenizer)
        model = ActorCritic(policy, critic)
    prompts = load_prompts(cfg, ctx, tokenizer, info)

    steps = cfg.total_steps(world)
    updates_per_step = cfg.ppo_epochs * cfg.rollout_batch_size // cfg.minibatch_size  # optimizer steps
    costs = model_costs(model, reference, adapters_off=adapters_off)  # FLOPs per token of each role
    optimizer, scheduler = make_optimizer(
        model.policy,
        model.critic,
        lr=cfg.learning_rate,
        critic_lr=cfg.critic_learning_rate or cfg.learning_rate,
        adam_eps=cfg.adam_eps,
        schedule=cfg.lr_schedule,
        total_updates=steps * updates_per_step,
    )
    # Not the scheduler: accelerate would step a prepared one once per process at every optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    reference = place_reference(reference, accelerator, model, adapters_off=adapters_off)
    rate = matmul_rate(cfg, accelerator, policy)
    score_counter = ForwardCounter(reward_models_of(reward_fn))  # the reward models' forwards, as they ran
    timer = PhaseTimer(accelerator.device)
    kl_ctl = make_kl_controller(cfg)
    # FSDP2 (accelerate's fully_shard) gathers each layer's weights in every forward, a collective:
    # a process whose responses all ended must keep stepping with the others (transformers only
    # turns this on by itself for FSDP1 and ZeRO-3, whose weights are gathered for the rollout here).
    synced = accelerator.distributed_type == DistributedType.FSDP and world > 1
    sampler = PromptSampler(
        len(prompts), batch_size=cfg.rollout_batch_size, seed=cfg.seed, rank=rank, world_size=world
    )
    set_seed(cfg.seed, device_specific=True)  # each process samples its own responses
    start, episodes, losses = 0, 0, []
    if ctx.resume_from:
        state = load_checkpoint(accelerator, ctx.resume_from)
        start, episodes, losses = state["step"], state["episodes"], state["losses"]
        kl_ctl.load_state_dict(state["kl_controller"])
        sampler.load_state_dict(state["prompts"])
        scheduler.load_state_dict(state["scheduler"])
        ctx.log(f"resumed from {ctx.resume_from}: step {start}, beta {kl_ctl.value:.4g}")
    ctx.log(
        f"PPO: {steps} steps x {cfg.rollout_batch_size} prompts x {world} processes, {cfg.ppo_epochs} epochs of "
        f"{cfg.rollout_batch_size // cfg.minibatch_size} minibatches; reference: {info['reference']}; "
        f"critic: {info['critic']}"
    )
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = accelerator.device

    # --- loop --------------------------------------------------------------------------------
    guard = ctx.nonfinite_guard(cfg)  # NaN/Inf rewards, advantages, losses, gradients (rlft/guards.py)
    check_disk_space(
        cfg, ctx, model, steps=steps - start, save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit
    )
    seconds, local_losses = [], []  # local_losses: this process's own, before averaging over processes
    for step in range(start + 1, steps + 1):
        began = time.time()
        rows = prompts.select(sampler.next_indices())
        texts = rows["prompt"]
        fields = {c: rows[c] for c in rows.column_names if c != "prompt"}
        prompt_ids, prompt_mask = left_pad(
            encode_prompts(tokenizer, texts, max_length=cfg.max_prompt_length), pad
        )
        model.eval()
        timer.take()  # drop what a skipped step left behind
        score_counter.take()
        with timer.phase("sample"), generation_model(model, accelerator) as unwrapped:
            rollout = sample_responses(
                unwrapped.policy,
                prompt_ids.to(device),
                prompt_mask.to(device),
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                eos_token_id=eos,
                pad_token_id=pad,
                synced_gpus=synced,
            )
            completions = decode_responses(tokenizer, rollout)
        with timer.phase("score"):
            scores = score_responses(reward_fn, texts, completions, fields)
        parts = getattr(reward_fn, "last_components", None) or {"reward": scores.tolist()}
        if not guard.check({f"reward '{n}'": torch.tensor(v) for n, v in parts.items()}, step=step):
            continue  # on_nonfinite: skip drops the rollout
        with timer.phase("forward"):
            exp = experience_from_rollout(
                model,
                reference,
                rollout,
                scores,
                temperature=cfg.temperature,
                forward_batch_size=cfg.forward_batch_size or cfg.minibatch_size,
                reference_disable_adapter=adapters_off,
                beta=kl_ctl.value,
                gamma=cfg.gamma,
                lam=cfg.lam,
                kl_kind=cfg.kl_estimator,
                whiten_rewards=cfg.whiten_rewards,
                missing_eos_penalty=cfg.missing_eos_penalty,
            )
        if not guard.check({"advantages": exp.advantages, "returns": exp.returns}, step=step):
            continue
        if unfreezing is not None:
            unfreezing.apply((step - 1) * updates_per_step)
            costs = model_costs(accelerator.unwrap_model(model), reference, adapters_off=adapters_off)
        with timer.phase("train"):
            train = ppo_update(
                model,
                optimizer,
                exp,
                accelerator=accelerator,
                ppo_epochs=cfg.ppo_epochs,
                minibatch_size=cfg.minibatch_size,
                gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                temperature=cfg.temperature,
                clip=cfg.cliprange,
                vf_clip=cfg.cliprange_value,
                vf_coef=cfg.vf_coef,
                entropy_coef=cfg.entropy_coef,
                max_grad_norm=cfg.max_grad_norm,
                generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + rank),
                on_optimizer_step=scheduler.step,
                check=lambda values: guard.check(values, step=step),  # noqa: B023 - called within this step
            )
        if not train:  # every micro-batch skipped
            continue
        values = step_metrics(exp, train, reward_fn=reward_fn)
        values["_tokens"] = rollout.attention_mask.sum()  # real prompt + response tokens of this rollout
        metrics = mean_over_processes(accelerator, values)
        tokens = metrics.pop("_tokens") * world
        metrics["ppo/beta"] = kl_ctl.value  # the beta this step's rewards used
        kl_ctl.update(metrics["ppo/kl"], n_steps=cfg.rollout_batch_size * world)
        episodes += cfg.rollout_batch_size * world
        seconds.append(time.time() - began)
        losses.append(metrics["ppo/loss"])
        local_losses.append(train["loss"])
        metrics |= {
            "ppo/lr": scheduler.get_last_lr()[0],
            "ppo/episodes": episodes,
            "perf/seconds_per_step": seconds[-1],
            "perf/tokens_per_second": tokens
            / seconds[-1],  # rollout tokens (all processes) per second of step
        }
        flops = ppo_step_flops(
            **costs,
            rows=len(rollout.sequences),
            prompt_tokens=prompt_ids.shape[1],
            response_tokens=rollout.response_mask.shape[1],
            ppo_epochs=cfg.ppo_epochs,
            score_flops=score_counter.take(),
        )
        phase_seconds = timer.take()
        phase_seconds["other"] = max(0.0, seconds[-1] - sum(phase_seconds.values()))
        metrics |= step_perf(flops, phase_seconds, rate=rate)  # perf/flops_per_step, perf/mfu, by phase
        ctx.tracker.log(metrics, step=step)
        if step % cfg.sample_every == 0 or step == 1 or step == steps:
            rows_table = sample_rows(texts, completions, scores, n=cfg.num_samples)
            ctx.tracker.log_table("ppo/samples", rows_table, step=step)
            ctx.log(
                f"step {step}/{steps}: score {metrics['ppo/score']:.3f}, kl {metrics['ppo/kl']:.3f}, "
                f"beta {metrics['ppo/beta']:.4f}, {seconds[-1]:.2f} s; e.g. {completions[0]!r}"
            )
        if step % cfg.save_steps == 0 and step < steps:
            state = {
                "step": step,
                "episodes": episodes,
                "losses": losses,
                "kl_controller": kl_ctl.state_dict(),
                "prompts": sampler.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            save_checkpoint(
                accelerator, checkpoint_path(ctx.checkpoint_dir, step), state, keep=cfg.save_total_limit
            )

    # --- save -------------------------------------------------------------------------------
    from rlft.distributed import gathered_submodule

    last = ctx.tracker.last
    result: dict[str, Any] = {"train/global_step": steps, "ppo/episodes": episodes}
    for key in ("ppo/score", "ppo/kl", "ppo/beta", "ppo/loss", "ppo/entropy", "ppo/response_length"):
        if key in last:
            result[key] = last[key]
    if "ppo/kl" in last:
        result["kl"] = last["ppo/kl"]  # the final mean response KL from the reference, for summary.json
    if seconds:
        result["perf/seconds_per_step"] = sum(seconds) / len(seconds)
    rank_info = {
        "rank": rank,
        "world_size": world,
        "losses": losses,  # averaged over the processes: the same on every rank
        "local_losses": local_losses,
        "param_checksum": weights_checksum(accelerator.unwrap_model(model).policy),
    }
    # The policy, whole on the main process (gathered under ZeRO-3), None on the others.
    policy = gathered_submodule(accelerator, model, "policy")
    if policy is not None:
        save_policy(policy, tokenizer, cfg, ctx, metrics=result, info=info, step=steps)
        samples = ctx.work_dir / "ppo_samples.jsonl"
        if samples.exists():
            (ctx.artifact_dir / samples.name).write_bytes(samples.read_bytes())
    accelerator.wait_for_everyone()
    return StageResult(metrics=result, info=info, rank=rank_info)


# --- setup helpers (each used once by `run`, in this order) --------------------------------------


def make_accelerator(cfg: PPOStage) -> Any:
    """accelerate as `accelerate launch` configured it, on the CPU when there is no CUDA device.

    Without CUDA the process group is set up on the CPU first (gloo; what the HF Trainer does with
    `use_cpu`): `Accelerator(cpu=True)` would also switch DeepSpeed off, and several CPU processes
    then still train together. A DeepSpeed plugin gets the batch settings it would otherwise read
    from a dataloader.
    """
    import torch
    from accelerate import Accelerator, PartialState

    if not torch.cuda.is_available():
        PartialState(cpu=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        micro = cfg.minibatch_size // cfg.gradient_accumulation_steps
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
        plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm or 0.0
    return accelerator


def load_reference(cfg: PPOStage, ctx: StageContext, *, policy: Any, tokenizer: Any) -> tuple[Any, bool, str]:
    """(reference model, whether it is the policy with adapters disabled, what it is).

    The policy with its adapters disabled *is* the starting model when a mergeable adapter
    (LoRA, DoRA, IA3) was put on it here: no second copy. Otherwise (full or freeze tuning, a
    prompt, an explicit `reference:`) a frozen copy is loaded.
    """
    from peft import PeftModel

    from rlft.reference import load_frozen_reference, reference_source
    from rlft.rl.critic import disable_dropout

    source, explicit = reference_source(cfg)
    if not explicit and isinstance(policy, PeftModel) and not policy.active_peft_config.is_prompt_learning:
        return None, True, "the starting model (the policy with its adapters disabled)"
    reference, description = load_frozen_reference(
        source, ctx, policy=policy, tokenizer=tokenizer, stage=cfg.name
    )
    disable_dropout(reference)
    return reference, False, description if explicit else "the starting model (a frozen copy)"


def load_critic(cfg: PPOStage, ctx: StageContext, *, tokenizer: Any) -> tuple[Any, str]:
    """The critic: from `critic:`, else the reward model (critic_init reward/auto), else the policy's start.

    The critic reads the policy's token ids, so a reward model with another tokenizer cannot be
    its start: `critic_init: reward` then fails, `auto` falls back to the policy (and says so).
    """
    from rlft.errors import ConfigError
    from rlft.models.loading import load_causal_lm, resolve_source
    from rlft.rl.critic import (
        disable_dropout,
        is_sequence_classifier,
        lora_critic,
        rescaled_head,
        value_model_from,
    )

    def resolve(source: ModelSource, key: str) -> Any:
        return resolve_source(
            source, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir, key=key
        )

    reward_model = next((e for e in (cfg.reward.sum or [cfg.reward]) if e.from_ or e.path), None)
    if cfg.critic is not None:
        source, key = cfg.critic, "critic"
    elif cfg.critic_init != "policy" and reward_model is not None:
        source, key = (
            ModelSource(
                **({"from": reward_model.from_} if reward_model.from_ else {"path": reward_model.path})
            ),
            "reward",
        )
    elif cfg.critic_init == "reward":
        raise ConfigError(
            f"stages.{cfg.name}.critic_init: reward, but the reward has no reward model (from/path); "
            "use critic_init: policy, or give critic: {...}"
        )
    else:
        source, key = cfg.model, "model"
    resolved = resolve(source, key)
    mismatch = _tokenizer_mismatch(resolved.name_or_path, tokenizer)
    if mismatch and key == "reward" and cfg.critic_init == "auto":
        ctx.log(f"critic: the reward model {mismatch}; the critic starts from the policy instead")
        source, key = cfg.model, "model"
        resolved, mismatch = resolve(source, key), None
    if mismatch:
        raise ConfigError(
            f"stages.{cfg.name}.{'critic' if key == 'critic' else 'critic_init'}: {resolved.description} {mismatch}; "
            "the critic reads the policy's tokens: start it from the policy (critic_init: policy)"
        )
    classifier = not resolved.gguf_file and is_sequence_classifier(resolved.name_or_path, **resolved.kwargs)
    loaded = load_causal_lm(
        resolved,
        dtype=source.dtype,
        auto_class="AutoModelForSequenceClassification" if classifier else "AutoModelForCausalLM",
        log=ctx.log,
        **({"num_labels": 1} if classifier else {}),
    )
    critic, head = value_model_from(loaded)
    if getattr(loaded, "active_peft_config", None) is not None:  # a kept prompt: a critic has none
        ctx.log(
            "critic: starts from the body and head of a prompt/prefix-tuned model, without its learned prompt"
        )
    if key == "reward" and head == "reward head":
        scale, shift = _reward_scale(cfg, reward_model, resolved.name_or_path)
        critic.head = rescaled_head(critic.head, scale=scale, shift=shift)
        head += f", rescaled to the reward's scale: {scale:.4g} * score + {shift:.4g}"
    if cfg.critic_design == "lora":
        lora = cfg.critic_lora or LoraTuning()
        critic = lora_critic(
            critic,
            r=lora.r,
            alpha=lora.alpha,
            target_modules=lora.target_modules,
            use_rslora=lora.use_rslora,
            use_dora=lora.method == "dora",
        )
        head += f"; {lora.method} r {lora.r} on its body, the head trained fully"
    disable_dropout(critic)
    return critic, f"{resolved.description} ({head})"


def _reward_scale(cfg: PPOStage, entry: RewardSpec, folder: str) -> tuple[float, float]:
    """(scale, shift) that turn the reward model's raw score into its part of the PPO reward:
    its weight (times the sum's), after normalisation by reward_stats.json when asked."""
    from reward_models.model import load_reward_stats

    weight = entry.weight * (cfg.reward.weight if cfg.reward.sum else 1.0)
    stats = load_reward_stats(folder) if entry.normalize else None
    if stats is None:
        return weight, 0.0
    return weight / stats["std"], -weight * stats["mean"] / stats["std"]


def _tokenizer_mismatch(folder: str, tokenizer: Any) -> str | None:
    """Why a model folder's tokenizer differs from the policy's (None: same vocabulary, or no tokenizer there)."""
    from transformers import AutoTokenizer

    try:
        other = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError):
        return None
    if other.get_vocab() != tokenizer.get_vocab():
        return f"has another tokenizer ({len(other)} tokens, the policy {len(tokenizer)})"
    return None


def load_prompts(cfg: PPOStage, ctx: StageContext, tokenizer: Any, info: dict[str, Any]) -> Any:
    """The training prompts: prompt-only rows (any format with a `prompt` column reads as prompt-only)."""
    data = load_data(cfg, ctx, formats=("prompt_only",), tokenizer=tokenizer)
    ctx.log(f"data: {len(data.train)} prompts ({data.report['style']})")
    report_data(data, tokenizer, ctx, max_length=cfg.max_prompt_length)
    info["data"] = data.report
    return data.train


def place_reference(reference: Any, accelerator: Any, model: Any, *, adapters_off: bool) -> Any:
    """The reference where the rollout runs it: the prepared policy itself (adapters disabled at use),
    a DeepSpeed inference engine (sharded like the policy under ZeRO-3), or the model on the device."""
    from accelerate.utils import DistributedType

    if adapters_off:
        return accelerator.unwrap_model(model).policy
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(reference, accelerator)
    return reference.to(accelerator.device)


def model_costs(model: Any, reference: Any, *, adapters_off: bool) -> dict[str, Any]:
    """What a token costs each role (rlft.rl.perf.ModelCost), for `ppo_step_flops`: the policy as it
    trains, the critic (a separate model, or a value head on the policy's pass), the reference (a
    copy, or the policy with its adapters off). Call it on the unprepared actor-critic."""
    from rlft.rl.critic import SharedActorCritic
    from rlft.rl.perf import head_cost, model_cost

    policy = model_cost(model.policy)
    critic = head_cost(model.critic) if isinstance(model, SharedActorCritic) else model_cost(model.critic)
    ref = policy.without_adapters() if adapters_off else model_cost(getattr(reference, "module", reference))
    return {"policy": policy, "critic": critic, "reference": ref}


def matmul_rate(cfg: PPOStage, accelerator: Any, policy: Any) -> float:
    """FLOP/s that perf/mfu divides by: `peak_flops` when given, else a matmul in the policy's dtype, timed."""
    from rlft.rl.perf import measure_matmul_flops

    if cfg.peak_flops is not None:
        return cfg.peak_flops
    dtype = next(p.dtype for p in policy.parameters() if p.is_floating_point())
    return measure_matmul_flops(dtype, accelerator.device)


def make_kl_controller(cfg: PPOStage) -> Any:
    from rlft.rl.kl_controller import AdaptiveKLController, FixedKLController

    if cfg.adaptive_kl is None:
        return FixedKLController(cfg.beta)
    return AdaptiveKLController(cfg.beta, target=cfg.adaptive_kl.target, horizon=cfg.adaptive_kl.horizon)
