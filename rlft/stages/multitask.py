"""`kind: multitask`: one model trained on several tasks at once, each with its own data, objective,
share of the training and evaluation (rlft's own loop, on accelerate).

Each task has a name, its `data:` (any source the data layer reads), an objective (`sft` on
prompt-completion or conversational data; `dpo` on preference pairs, its loss configured as the
`dpo` stage's: beta, loss_type, ...), a sampling weight, optionally a prefix or system prompt
added to its prompts (in training and evaluation), and optionally its own verifiable reward on its
own held-out prompts.

Mixing: every micro-batch comes from one task, drawn by the mixture (rlft.data.mixture): by the
tasks' weights, or by temperature over their sizes (p_i ∝ n_i^(1/T)), seeded and the same on
every process, each process taking its own rows of the drawn task. One task per micro-batch,
rather than every batch holding every task and summing their objectives, because:
- a task's share of the training is then its share of the draws, exactly as configured (weights
  like 0.07 need no per-task batch sizes rounded to whole rows);
- each micro-batch's loss is one objective's, so SFT rows (token-level NLL) and preference pairs
  (a loss per pair, against reference log-probs) never share a padded batch or a normalisation;
- the expected gradient is still the weighted sum Σ p_i ∇L_i of the tasks' objectives, and with
  gradient accumulation one optimizer step sums the objectives of the micro-batches drawn for it.
A task's `loss_weight` scales its loss apart from how often it is drawn.

The DPO reference is the stage's starting model (the policy with a new adapter disabled, or the
policy before its first step); its log-probs of every pair are computed once, before training.

    setup: accelerator -> policy (+ tuning) -> each task's data, encoded -> shares -> optimizer
           -> reference log-probs of the preference tasks -> sampler (resumed from a checkpoint)
    loop:  steps x gradient_accumulation_steps micro-batches, one task each -> optimizer step;
           logs (train/loss, task/<name>/train_loss, task/<name>/share), evaluations
           (task/<name>/loss, task/<name>/reward), checkpoints
    save:  plain HF folder (adapters merged), a per-task table in the log and stage.json
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from rlft.config import NAME_PATTERN, Strict, also_accepts
from rlft.data import DataConfig
from rlft.errors import ConfigError, DataError
from rlft.models.tuning import FullTuning, TuningConfig
from rlft.stages.base import StageBase, StageContext, StageResult
from rlft.stages.dpo import LossName, check_losses

if TYPE_CHECKING:
    from rlft.multitask import LoadedTask

logger = logging.getLogger(__name__)

FORMATS = {
    "sft": ("prompt_completion", "language_modeling"),
    "dpo": ("preference", "implicit_preference"),
}


class TaskBase(Strict):
    """Keys every task has; its objective's class adds that objective's keys."""

    name: str = Field(
        pattern=NAME_PATTERN, description="unique in the stage; names its metrics task/<name>/..."
    )
    data: DataConfig = Field(
        description="the task's data (any source the data layer reads, with fields mapping)"
    )
    weight: float | None = Field(
        None,
        ge=0,
        description="with mixing by weights: the task's share is weight / sum of weights (None: 1; 0: never "
        "trained, still evaluated)",
    )
    loss_weight: float = Field(
        1.0, ge=0, description="scales the task's loss (its gradient), apart from how often it is drawn"
    )
    prefix: str | None = Field(
        None,
        description="text put before the user's words in each of the task's prompts (training and evaluation)",
    )
    system_prompt: str | None = Field(
        None,
        description="a system message put first in each of the task's prompts (conversational data only; training "
        "and evaluation)",
    )
    reward: str | None = Field(
        None,
        description="the task's verifiable reward, `module:function` or `file.py:function`, "
        "f(prompts, completions, **fields); measured on eval_prompts at every evaluation",
    )
    eval_prompts: str | None = Field(
        None,
        description="JSONL of held-out rows with a `prompt` and the reward's fields (as the pipeline's "
        "evaluate.prompts), relative to the pipeline file",
    )

    @model_validator(mode="after")
    def _reward_with_prompts(self) -> TaskBase:
        if (self.reward is None) != (self.eval_prompts is None):
            given, missing = (
                ("reward", "eval_prompts") if self.reward is not None else ("eval_prompts", "reward")
            )
            raise ValueError(f"{given} is measured with {missing}: give both, or neither")
        return self


class SFTTask(TaskBase):
    """A task trained by supervised fine-tuning: NLL of the completions (prompt tokens take no loss)."""

    objective: Literal["sft"] = Field(
        "sft",
        description="sft: NLL of completions (prompt-completion, or `messages`/`text` data); dpo: preference pairs",
    )


class DPOTask(TaskBase):
    """A task trained on preference pairs with the DPO loss (or a variant), as the `dpo` stage configures it;
    the reference is the stage's starting model."""

    objective: Literal["dpo"] = Field(
        description="sft: NLL of completions (prompt-completion, or `messages`/`text` data); dpo: preference pairs"
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

    @field_validator("loss_type", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> DPOTask:
        check_losses(self.loss_type, self.loss_weights, self.label_smoothing)
        return self


def _objective(value: Any) -> str:
    """The tag of a task: its `objective`, sft when not given."""
    if isinstance(value, dict):
        return value.get("objective", "sft")
    return getattr(value, "objective", "sft")


Task = Annotated[Annotated[SFTTask, Tag("sft")] | Annotated[DPOTask, Tag("dpo")], Discriminator(_objective)]


class MixingConfig(Strict):
    """How often each task is drawn: by the tasks' weights, or by temperature over their sizes."""

    by: Literal["weights", "temperature"] = Field(
        "weights",
        description="weights: p_i = weight_i / sum of weights; temperature: p_i ∝ n_i^(1/T) over the tasks' "
        "training rows n_i",
    )
    temperature: float | None = Field(
        None,
        gt=0,
        description="T of mixing by temperature: 1 = proportional to size, higher = flatter (towards uniform)",
    )

    @model_validator(mode="after")
    def _temperature_with_temperature(self) -> MixingConfig:
        if self.by == "temperature" and self.temperature is None:
            raise ValueError("by: temperature needs temperature (e.g. 2.0)")
        if self.by == "weights" and self.temperature is not None:
            raise ValueError(
                "temperature is read by `by: temperature` only; remove it, or mix by temperature"
            )
        return self


class MultitaskStage(StageBase):
    """Several tasks trained together (SFT and DPO objectives), mixed by weight or temperature, with per-task
    metrics; rlft's own loop on accelerate."""

    kind: Literal["multitask"] = Field(
        "multitask", description="several tasks (sft, dpo) trained together, rlft's own loop on accelerate"
    )
    tasks: list[Task] = Field(
        min_length=1,
        description="the tasks: each a name, data, objective (sft or dpo), weight, optional prefix/system_prompt "
        "and reward with eval_prompts",
    )
    mixing: MixingConfig = Field(
        MixingConfig(), description="how often each task is drawn: by: weights, or by: temperature"
    )
    tuning: TuningConfig = Field(
        default_factory=FullTuning,
        description="which parameters train: method full, freeze, lora, dora, adapter, prompt_tuning or prefix_tuning",
    )
    steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int = Field(8, gt=0, description="rows per micro-batch, per process (all from one task)")
    gradient_accumulation_steps: int = Field(
        1,
        gt=0,
        description="micro-batches per optimizer step, each drawn from the mixture (more: less memory)",
    )
    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate of AdamW")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="after warmup: linear or cosine decay to 0 over the run, or constant"
    )
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float | None = Field(1.0, gt=0, description="gradient clipping norm; None: off")
    max_length: int | None = Field(
        1024, gt=0, description="prompt + answer tokens; longer rows are cut at the end (lower: less memory)"
    )
    logging_steps: int = Field(10, gt=0, description="log train/loss and per-task train losses every N steps")
    eval_steps: int | None = Field(
        None, gt=0, description="evaluate every task every N steps (and at the end); None: at the end only"
    )
    eval_batch_size: int = Field(
        32, gt=0, description="rows per forward pass and prompts per generation batch"
    )
    eval_max_new_tokens: int = Field(32, gt=0, description="generation budget per prompt of a task's reward")
    eval_max_prompts: int | None = Field(
        None, gt=0, description="measure each task's reward on the first N of its eval_prompts only"
    )
    save_steps: int = Field(
        100, gt=0, description="checkpoint every N steps (a stage that died resumes there)"
    )
    save_total_limit: int | None = Field(2, gt=0, description="checkpoints kept; None: all")
    evaluate: bool = Field(True, description="measure the pipeline's task reward after training")

    uses_task_eval = True

    @model_validator(mode="after")
    def _consistent(self) -> MultitaskStage:
        seen: dict[str, int] = {}
        for i, task in enumerate(self.tasks):
            if task.name in seen:
                raise ValueError(
                    f"tasks[{i}].name: '{task.name}' is the name of tasks[{seen[task.name]}] too; task names must "
                    "be unique"
                )
            seen[task.name] = i
        weighted = [i for i, t in enumerate(self.tasks) if t.weight is not None]
        if self.mixing.by == "temperature" and weighted:
            raise ValueError(
                f"tasks[{weighted[0]}].weight: mixing by temperature sets the shares from the tasks' sizes; remove "
                "the weights, or mix by weights"
            )
        if self.mixing.by == "weights" and sum(self.weights()) <= 0:
            raise ValueError("tasks: the weights sum to 0; give at least one task a weight above 0")
        return self

    def weights(self) -> list[float]:
        return [1.0 if t.weight is None else t.weight for t in self.tasks]

    def shares(self, sizes: list[int]) -> list[float]:
        """Each task's share of the micro-batches, given its number of training rows."""
        from rlft.data.mixture import mixture_shares

        if self.mixing.by == "temperature":
            return mixture_shares(sizes, temperature=self.mixing.temperature)
        return mixture_shares(sizes, weights=self.weights())

    def data_sections(self) -> dict[str, Any]:
        return {f"tasks[{i}].data": t.data for i, t in enumerate(self.tasks)}

    def input_files(self) -> dict[str, str]:
        files = {}
        for i, t in enumerate(self.tasks):
            if t.eval_prompts is not None:
                files[f"tasks[{i}].eval_prompts"] = t.eval_prompts
            if t.reward is not None and t.reward.rpartition(":")[0].endswith(".py"):
                files[f"tasks[{i}].reward"] = t.reward.rpartition(":")[0]
        return files


# --- a task, loaded ---------------------------------------------------------------------------


def load_task(i: int, cfg: MultitaskStage, ctx: StageContext, *, tokenizer: Any) -> LoadedTask:
    """Task i's data through the data layer, its prompts with the task's additions, encoded; its eval prompts
    and reward function."""
    from rlft.data import load_stage_data
    from rlft.data.config import with_stage_paths
    from rlft.data.formats import convert
    from rlft.multitask import LoadedTask

    task = cfg.tasks[i]
    key = f"stages.{cfg.name}.tasks[{i}]"
    try:
        task_data = with_stage_paths(task.data, ctx.stage_dirs, section=f"{key}.data")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        data = load_stage_data(
            task_data,
            formats=FORMATS[task.objective],
            base_dir=ctx.base_dir,
            rejects_path=ctx.work_dir / f"rejects-{task.name}.jsonl",
            section=f"{key}.data",
            tokenizer=tokenizer,
        )
    except DataError as e:
        if "make none of the formats" not in str(e):
            raise
        hint = {
            "dpo": "objective dpo trains on preference pairs (prompt, chosen, rejected); for prompt-completion "
            "data use objective: sft",
            "sft": "objective sft trains on prompt-completion, `messages` or `text` rows; for preference pairs "
            "use objective: dpo",
        }[task.objective]
        raise DataError(f"{key} (task '{task.name}'): {hint}. {e}") from None
    if data.format == "implicit_preference":
        for split in ("train", "eval"):
            if getattr(data, split) is not None:
                setattr(
                    data, split, convert(getattr(data, split), source=data.format, target="preference")[0]
                )
        data.report["conversions"].append(f"{key}.data: extracted the implicit prompt")
    encode = _encoder(task, tokenizer, cfg.max_length, key=key)
    train, dropped = encode(data.train)
    if not train:
        raise ConfigError(
            f"{key}: none of the task's {len(data.train)} training rows has an answer token left after cutting to "
            f"max_length={cfg.max_length}; raise stages.{cfg.name}.max_length"
        )
    if dropped:
        logger.warning(
            f"{key}: {dropped} of {len(data.train)} training rows have no answer token left after cutting to "
            f"max_length={cfg.max_length}; they are left out"
        )
    held_out = encode(data.eval)[0] if data.eval is not None else None
    data.report["rows_dropped_by_max_length"] = dropped
    prompts, reward_fn = None, None
    if task.reward is not None:
        from reward_models.loading import RewardLoadError, load_function

        try:
            reward_fn = load_function(task.reward, base_dir=ctx.base_dir)
        except RewardLoadError as e:
            raise ConfigError(f"{key}.reward: {e}") from None
        prompts = _eval_prompts(task, key, ctx, max_prompts=cfg.eval_max_prompts)
    return LoadedTask(task, key, train, held_out, prompts, reward_fn, data.report)


def _encoder(task: SFTTask | DPOTask, tokenizer: Any, max_length: int | None, *, key: str) -> Any:
    """rows -> (encoded rows, how many were dropped), the task's prefix and system prompt added first."""
    from rlft.multitask import encode_pair, encode_sft, with_additions

    def add(value: Any) -> Any:
        try:
            return with_additions(value, prefix=task.prefix, system_prompt=task.system_prompt)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None

    def encode(ds: Any) -> tuple[list[dict[str, Any]], int]:
        rows, dropped = [], 0
        for row in ds:
            if "prompt" in row:
                row = {**row, "prompt": add(row["prompt"])}
            elif "messages" in row:
                row = {**row, "messages": add(row["messages"])}
            elif task.prefix:
                row = {**row, "text": f"{task.prefix}{row['text']}"}
            if task.objective == "dpo":
                encoded = encode_pair(tokenizer, row, max_length=max_length)
            else:
                encoded = encode_sft(tokenizer, row, max_length=max_length)
            if encoded is None:
                dropped += 1
            else:
                rows.append(encoded)
        return rows, dropped

    return encode


def _eval_prompts(task: Any, key: str, ctx: StageContext, *, max_prompts: int | None) -> list[dict[str, Any]]:
    """The task's held-out prompt rows: `prompt` with the task's additions (what the model sees), the original
    in `original_prompt` (what the reward reads), and the row's other fields."""
    from rlft.multitask import with_additions

    path = Path(task.eval_prompts).expanduser()
    path = path if path.is_absolute() else ctx.base_dir / path
    if not path.is_file():
        raise ConfigError(f"{key}.eval_prompts: {path} does not exist")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{key}.eval_prompts: line {n} of {path} is not JSON ({e})") from None
        if not isinstance(row, dict) or "prompt" not in row:
            raise ConfigError(f"{key}.eval_prompts: line {n} of {path} has no `prompt`")
        try:
            model_prompt = with_additions(row["prompt"], prefix=task.prefix, system_prompt=task.system_prompt)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
        rows.append({**row, "prompt": model_prompt, "original_prompt": row["prompt"]})
    if not rows:
        raise ConfigError(f"{key}.eval_prompts: {path} has no rows")
    return rows[:max_prompts] if max_prompts else rows


# --- the stage --------------------------------------------------------------------------------


def run(cfg: MultitaskStage, ctx: StageContext) -> StageResult:
    import torch
    from accelerate.utils import DistributedType, set_seed
    from peft import PeftModel

    from rlft.data.mixture import TaskSampler
    from rlft.models.loading import resolve_source
    from rlft.multitask import evaluate_tasks, micro_batch_loss, score_reference
    from rlft.rl.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
    from rlft.rl.metrics import mean_over_processes, weights_checksum
    from rlft.stages.common import check_disk_space, load_policy

    # --- setup ------------------------------------------------------------------------------
    # Resolve the source (a tiny model is built there) before the accelerator: see rlft.stages.ppo.run.
    source = resolve_source(
        cfg.model, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir
    )
    accelerator = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    loaded = load_policy(cfg, ctx, resolved=source)
    policy, tokenizer, info, unfreezing = loaded.model, loaded.tokenizer, loaded.info, loaded.unfreezing
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tasks = [load_task(i, cfg, ctx, tokenizer=tokenizer) for i in range(len(cfg.tasks))]
    sizes = [len(t.train) for t in tasks]
    shares = cfg.shares(sizes)
    for task, share in zip(tasks, shares, strict=True):
        ctx.log(
            f"task {task.name} ({task.objective}): {len(task.train)} train rows, "
            f"{len(task.eval or [])} eval rows, {len(task.prompts or [])} reward prompts; share {share:.3f}"
        )
    optimizer, scheduler = make_optimizer(cfg, policy)
    model, optimizer = accelerator.prepare(policy, optimizer)
    if any(t.objective == "dpo" for t in tasks):
        # Now, before the first step and before a checkpoint is loaded: the model is the starting model.
        adapter_off = isinstance(policy, PeftModel) and not isinstance(loaded.start, PeftModel)
        score_reference(
            model, tasks, accelerator, adapter_off=adapter_off, batch_size=cfg.eval_batch_size, pad_id=pad_id
        )
        info["reference"] = "the starting model" + (
            " (the policy with its new adapter disabled)"
            if adapter_off
            else " (the policy before its first step)"
        )
        ctx.log(f"reference: {info['reference']}; its log-probs of every pair computed once")
    sampler = TaskSampler(  # a task's rows in an order seeded by its name: the same alone or mixed
        shares,
        sizes,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        names=[t.name for t in tasks],
    )
    set_seed(cfg.seed)
    start, losses, local_losses = 0, [], []
    if ctx.resume_from:
        state = load_checkpoint(accelerator, ctx.resume_from)
        start, losses, local_losses = state["step"], state["losses"], state["local_losses"]
        sampler.load_state_dict(state["sampler"])
        scheduler.load_state_dict(state["scheduler"])
        ctx.log(f"resumed from {ctx.resume_from}: step {start}")
    ctx.log(
        f"multitask: {cfg.steps} steps x {cfg.gradient_accumulation_steps} micro-batches of {cfg.batch_size} rows "
        f"x {world} processes, each micro-batch from one task drawn by the mixture"
    )
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    evaluate = dict(
        tokenizer=tokenizer,
        pad_id=pad_id,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.eval_max_new_tokens,
    )

    # --- loop --------------------------------------------------------------------------------
    guard = ctx.nonfinite_guard(cfg)  # NaN/Inf task losses (rlft/guards.py)
    check_disk_space(
        cfg,
        ctx,
        model,
        steps=cfg.steps - start,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
    )
    # Per task, this process's micro-batch losses since the last log, and since the last evaluation.
    # Every process draws the same tasks, so every process has the same keys to average.
    window: dict[str, list[float]] = {}
    since_eval: dict[str, list[float]] = {}
    step_losses, seconds, tokens, logged, evaluation = [], [], 0.0, {}, {}
    for step in range(start + 1, cfg.steps + 1):
        began = time.time()
        model.train()
        if unfreezing is not None:
            unfreezing.apply(step - 1)
        micro_losses = []
        for _ in range(cfg.gradient_accumulation_steps):
            index, row_ids = sampler.next()
            task = tasks[index]
            with accelerator.accumulate(model):
                loss, _, n_tokens = micro_batch_loss(
                    model, task, [task.train[i] for i in row_ids], pad_id=pad_id, device=accelerator.device
                )
                if not guard.check({f"task '{task.name}' loss": loss}, step=step):
                    continue  # on_nonfinite: skip drops the micro-batch
                accelerator.backward(loss * task.cfg.loss_weight)  # accelerate divides by the accumulation
                if accelerator.sync_gradients and cfg.max_grad_norm is not None and not deepspeed:
                    accelerator.clip_grad_norm_(
                        model.parameters(), cfg.max_grad_norm
                    )  # DeepSpeed clips itself
                optimizer.step()  # only once the micro-batches of the step are in
                optimizer.zero_grad()
            micro_losses.append(loss.item())
            window.setdefault(task.name, []).append(loss.item())
            since_eval.setdefault(task.name, []).append(loss.item())
            tokens += n_tokens
        if not micro_losses:  # every micro-batch of the step skipped
            continue
        scheduler.step()
        local_losses.append(sum(micro_losses) / len(micro_losses))
        losses.append(mean_over_processes(accelerator, {"loss": torch.tensor(local_losses[-1])})["loss"])
        step_losses.append(losses[-1])
        seconds.append(time.time() - began)

        if step % cfg.logging_steps == 0 or step == cfg.steps:
            logged = log_metrics(
                window,
                step_losses,
                seconds[-len(step_losses) :],
                tokens,
                sampler,
                tasks,
                accelerator,
                scheduler,
            )
            ctx.tracker.log(logged, step=step)
            ctx.log(
                f"step {step}/{cfg.steps}: loss {logged['train/loss']:.4f}; "
                + ", ".join(
                    f"{k.split('/')[1]} {v:.4f}" for k, v in logged.items() if k.endswith("/train_loss")
                )
            )
            window, step_losses, tokens = {}, [], 0.0
        if (cfg.eval_steps and step % cfg.eval_steps == 0) or step == cfg.steps:
            evaluation = evaluate_tasks(model, tasks, accelerator, **evaluate)
            # A task without eval rows: its training loss since the previous evaluation stands for its loss.
            means = {
                f"task/{t.name}/loss": torch.tensor(sum(since_eval[t.name]) / len(since_eval[t.name]))
                for t in tasks
                if not t.eval and since_eval.get(t.name)
            }
            evaluation |= mean_over_processes(accelerator, means) if means else {}
            since_eval = {}
            ctx.tracker.log(evaluation, step=step)
            for task in tasks:
                ctx.tracker.log_table(f"task/{task.name}/samples", task.samples, step=step)
        if step % cfg.save_steps == 0 and step < cfg.steps:
            state = {
                "step": step,
                "losses": losses,
                "local_losses": local_losses,
                "sampler": sampler.state_dict(),
                "scheduler": scheduler.state_dict(),
            }
            save_checkpoint(
                accelerator, checkpoint_path(ctx.checkpoint_dir, step), state, keep=cfg.save_total_limit
            )

    # --- save -------------------------------------------------------------------------------
    from rlft.distributed import gathered_prepared
    from rlft.multitask import format_table
    from rlft.stages.common import save_policy

    result: dict[str, Any] = {"train/global_step": cfg.steps}
    if "train/loss" in logged:
        result["train/loss"] = logged["train/loss"]  # the mean over the last logging window
    table = task_table(tasks, shares, sampler, evaluation)
    for row in table:
        for key in ("loss", "reward", "accuracy", "share", "target_share"):
            if row.get(key) is not None:
                result[f"task/{row['task']}/{key}"] = row[key]
    ctx.log("per-task results:")
    for line in format_table(table):
        ctx.log(line)
    info["tasks"] = [
        {**row, "data": t.report, "samples": t.samples[:3]} for row, t in zip(table, tasks, strict=True)
    ]
    if seconds:
        result["perf/seconds_per_step"] = sum(seconds) / len(seconds)
    rank_info = {
        "rank": rank,
        "world_size": world,
        "losses": losses,  # averaged over the processes: the same on every rank
        "local_losses": local_losses,
        "param_checksum": weights_checksum(accelerator.unwrap_model(model)),
    }
    whole = gathered_prepared(accelerator, model)  # whole on the main process, None on the others
    if whole is not None:
        save_policy(whole, tokenizer, cfg, ctx, metrics=result, info=info, step=cfg.steps)
        for task in tasks:
            samples = ctx.work_dir / f"task_{task.name}_samples.jsonl"
            if samples.exists():
                (ctx.artifact_dir / samples.name).write_bytes(samples.read_bytes())
    accelerator.wait_for_everyone()
    return StageResult(metrics=result, info=info, rank=rank_info)


# --- helpers of `run` -----------------------------------------------------------------------------


def make_accelerator(cfg: MultitaskStage) -> Any:
    """accelerate as `accelerate launch` configured it, on the CPU when there is no CUDA device (for the
    reasons of rlft.stages.ppo.make_accelerator); a DeepSpeed plugin gets the batch settings."""
    import torch
    from accelerate import Accelerator, PartialState

    if not torch.cuda.is_available():
        PartialState(cpu=True)
    accelerator = Accelerator(gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
        plugin.deepspeed_config["gradient_clipping"] = cfg.max_grad_norm or 0.0
    return accelerator


def make_optimizer(cfg: MultitaskStage, policy: Any) -> tuple[Any, Any]:
    """AdamW over the trainable parameters, and its schedule per optimizer step (transformers'
    get_scheduler: linear warmup, then linear or cosine decay to 0, or constant). The loop steps the
    schedule itself: accelerate would step a prepared one once per process."""
    import torch
    from transformers import get_scheduler

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    name = "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps
    )
    return optimizer, scheduler


def log_metrics(
    window: dict[str, list[float]],
    step_losses: list[float],
    seconds: list[float],
    tokens: float,
    sampler: Any,
    tasks: list[LoadedTask],
    accelerator: Any,
    scheduler: Any,
) -> dict[str, float]:
    """What a logging step records: train/loss (the mean over the window's steps, all processes),
    task/<name>/train_loss (each task's micro-batches in the window), task/<name>/share (the realised
    share of the micro-batches so far), train/samples_seen (rows drawn so far, all processes; the sampler's
    count, restored on resume), the learning rate and speed. Every process must call it."""
    import torch

    from rlft.rl.metrics import mean_over_processes

    means = {f"task/{name}/train_loss": torch.tensor(sum(v) / len(v)) for name, v in window.items()}
    metrics = mean_over_processes(accelerator, {**means, "_tokens": torch.tensor(tokens)})
    metrics["perf/tokens_per_second"] = metrics.pop("_tokens") * accelerator.num_processes / sum(seconds)
    metrics |= {
        "train/loss": sum(step_losses) / len(step_losses),
        "train/learning_rate": scheduler.get_last_lr()[0],
        "train/samples_seen": sampler.draws
        * sampler.batch_size
        * sampler.world_size,  # rows drawn, all processes
        "perf/seconds_per_step": sum(seconds) / len(seconds),
        **{f"task/{t.name}/share": s for t, s in zip(tasks, sampler.realised_shares(), strict=True)},
    }
    return metrics


def task_table(
    tasks: list[LoadedTask], shares: list[float], sampler: Any, evaluation: dict[str, float]
) -> list[dict[str, Any]]:
    """One row per task: its objective, rows, target and realised share, micro-batches drawn, and its last
    evaluation: loss (on its eval rows, or its training batches since the previous evaluation), reward,
    pair accuracy."""
    rows = []
    for i, (task, share) in enumerate(zip(tasks, shares, strict=True)):
        row = {
            "task": task.name,
            "objective": task.objective,
            "train_rows": len(task.train),
            "target_share": round(share, 4),
            "share": round(sampler.realised_shares()[i], 4),
            "micro_batches": sampler.counts[i],
            "loss": evaluation.get(f"task/{task.name}/loss"),
            "loss_on": "eval rows" if task.eval else "train batches since the previous evaluation",
            "reward": evaluation.get(f"task/{task.name}/reward"),
        }
        if task.objective == "dpo":
            row["accuracy"] = evaluation.get(f"task/{task.name}/accuracy")
        rows.append(row)
    return rows
