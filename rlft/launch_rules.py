"""Known-bad combinations of a stage and its launch config, refused before anything starts.

`rlft validate` checks them, and so does `rlft run` before its first stage. A rule is a small
function `rule(stage, launch) -> str | None`: the stage's config and its `Launch` (the parsed
accelerate YAML and the DeepSpeed JSON it names) in, the reason it would fail out, or None. Its
docstring says what goes wrong and ends with `Source:` lines: the docs, issue or source line that
establishes it (versions as installed here: accelerate 1.15.0, deepspeed 0.19.8, transformers
5.24, peft 0.21.2), and what was seen on this machine. The error cites the rule and its first source.

Only what could be sourced is here. Looked at and left out: FSDP with gradual unfreezing (FSDP2,
launch/fsdp.yaml, passes `requires_grad` from the sharded to the unsharded parameter at every
all-gather: torch/distributed/fsdp/_fully_shard/_fsdp_param.py, `set_requires_grad_if_needed`);
prompt tuning under ZeRO-3 at load time (peft fixed it: huggingface/peft#1591).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rlft import yamlio
from rlft.distributed import outer_launch
from rlft.errors import ConfigError
from rlft.resources import find_launch_config, shipped


@dataclass
class Launch:
    """A stage's launch, parsed: the accelerate YAML, and the DeepSpeed JSON when it names one."""

    name: str  # as the pipeline or --launch gives it (or "the outer accelerate launch")
    accelerate: dict[str, Any]  # the accelerate config (YAML)
    deepspeed: dict[str, Any] = field(default_factory=dict)  # the DeepSpeed config file (JSON); {} when none

    @property
    def distributed_type(self) -> str:
        return str(self.accelerate.get("distributed_type", "NO"))

    @property
    def num_processes(self) -> int:
        return int(self.accelerate.get("num_processes") or 1)

    @property
    def zero_stage(self) -> int | None:
        """The DeepSpeed ZeRO stage (from the JSON, else the YAML's inline setting); None without DeepSpeed."""
        if self.distributed_type != "DEEPSPEED":
            return None
        stage = (self.deepspeed.get("zero_optimization") or {}).get("stage")
        if stage is None:
            stage = (self.accelerate.get("deepspeed_config") or {}).get("zero_stage")
        return int(stage) if stage is not None else None

    @property
    def offload_optimizer(self) -> str:
        """Where ZeRO keeps the optimizer state: "none", "cpu" or "nvme"."""
        if self.distributed_type != "DEEPSPEED":
            return "none"
        device = ((self.deepspeed.get("zero_optimization") or {}).get("offload_optimizer") or {}).get(
            "device"
        )
        if device is None:
            device = (self.accelerate.get("deepspeed_config") or {}).get("offload_optimizer_device")
        return str(device or "none")


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


def gradual_unfreezing_under_zero(stage: Any, launch: Launch) -> str | None:
    """Gradual unfreezing keeps the blocks that open later in the optimizer and switches their
    `requires_grad` after the trainer has built it (rlft/models/tuning.py, GradualUnfreezing).
    ZeRO (stages 1-3) flattens the trainable parameters into partitions when DeepSpeed starts and
    fills a missing gradient with zeros, so a "frozen" block still takes weight decay and counts
    Adam steps: seen here with ZeRO-2 on 2 CPU processes, a block frozen for 2 steps moved by
    1.3e-4 (0 under DDP), and the run's weights differed from DDP's by 1.2e-2 after 4 steps.
    DeepSpeed supports switching trainable parameters only by rebuilding the optimizer.

    Source: https://github.com/deepspeedai/DeepSpeed/issues/5639
    Source: deepspeed/runtime/zero/stage_1_and_2.py, `set_none_gradients_to_zero` (deepspeed 0.19.8)
    """
    tuning = getattr(stage, "tuning", None)
    if tuning is None or tuning.method != "freeze" or tuning.unfreeze_every is None:
        return None
    if not launch.zero_stage:
        return None
    return (
        f"gradual unfreezing (tuning.unfreeze_every: {tuning.unfreeze_every}) under DeepSpeed ZeRO-{launch.zero_stage}: "
        "ZeRO flattens the parameters into its optimizer when it starts, so the blocks waiting their turn still "
        "take weight decay and Adam steps; run this stage with DDP (cpu_2proc, multi_gpu) or FSDP, or drop unfreeze_every"
    )


def prompt_learning_under_zero3(stage: Any, launch: Launch) -> str | None:
    """Prompt and prefix tuning under ZeRO-3 hang at the trainer's first checkpoint save: only the
    main process saves, and peft's `save_pretrained` runs the prompt encoder's forward to get the
    prompt to save (`get_prompt_embedding_to_save`), whose ZeRO-3 parameters must be gathered by
    every process. Seen here (SFT, 2 CPU processes, ZeRO-3): rank 0 waits in that all-gather,
    rank 1 in DeepSpeed's checkpoint barrier, for ever. Small prompts escape only while they stay
    under `stage3_param_persistence_threshold` (not partitioned). A fix was proposed upstream and
    closed unmerged.

    Source: https://github.com/huggingface/transformers/pull/29980
    Source: peft/peft_model.py, `PeftModel.get_prompt_embedding_to_save` (peft 0.21.2)
    """
    tuning = getattr(stage, "tuning", None)
    if tuning is None or tuning.method not in ("prompt_tuning", "prefix_tuning"):
        return None
    if launch.zero_stage != 3:
        return None
    return (
        f"{tuning.method} under DeepSpeed ZeRO-3 hangs at the first checkpoint save (only the main process runs the "
        "prompt encoder that peft saves, and under ZeRO-3 that needs every process); use ZeRO-2 or DDP for this stage"
    )


# DeepSpeed JSON keys the HF trainer fills from its arguments, and the trainer keys they must equal
# when the JSON gives a value instead of "auto" (transformers HfTrainerDeepSpeedConfig.trainer_config_process).
DEEPSPEED_TRAINER_KEYS = {
    "train_micro_batch_size_per_gpu": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "max_grad_norm",
    "optimizer.params.lr": "learning_rate",
    "optimizer.params.betas": ("adam_beta1", "adam_beta2"),
    "optimizer.params.eps": "adam_epsilon",
    "optimizer.params.weight_decay": "weight_decay",
    "scheduler.params.warmup_max_lr": "learning_rate",
}


def deepspeed_values_match_trainer(stage: Any, launch: Launch) -> str | None:
    """A DeepSpeed JSON value that is not "auto" must equal the stage's trainer setting, or the
    HF trainer stops at its first step with "Please correct the following DeepSpeed config values
    that mismatch TrainingArguments values". `train_batch_size` must equal processes x
    per-device batch x gradient accumulation. Checked for the stages on TRL/transformers
    trainers; the stage's value is its `trainer:` key, else rlft's default, else the trainer config's.

    Source: transformers/integrations/deepspeed.py, `HfTrainerDeepSpeedConfig.trainer_config_process` and `trainer_config_finalize` (transformers 5.24)
    """
    class_path = getattr(stage, "trainer_config_class", None)
    if class_path is None or not launch.deepspeed:
        return None
    problems = []
    for ds_key, trainer_key in DEEPSPEED_TRAINER_KEYS.items():
        ds_value = _get_dotted(launch.deepspeed, ds_key)
        if ds_value is None or ds_value == "auto":
            continue
        keys = trainer_key if isinstance(trainer_key, tuple) else (trainer_key,)
        values = [trainer_value(stage, k) for k in keys]
        if any(v is _UNKNOWN for v in values):
            continue
        value = list(values) if len(values) > 1 else values[0]
        if ds_value != value:
            problems.append(f"{ds_key}={ds_value} but trainer.{'+'.join(keys)}={value}")
    total = launch.deepspeed.get("train_batch_size")
    if total not in (None, "auto"):
        parts = [
            trainer_value(stage, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps")
        ]
        if _UNKNOWN not in parts and total != launch.num_processes * parts[0] * parts[1]:
            problems.append(
                f"train_batch_size={total} but {launch.num_processes} processes x per_device_train_batch_size "
                f"{parts[0]} x gradient_accumulation_steps {parts[1]} = {launch.num_processes * parts[0] * parts[1]}"
            )
    if not problems:
        return None
    return (
        f"the DeepSpeed config disagrees with the stage's trainer settings ({'; '.join(problems)}), which the HF "
        'trainer refuses at its first step; set these DeepSpeed values to "auto" (the trainer fills them) or make them equal'
    )


def own_loop_with_deepspeed_optimizer(stage: Any, launch: Launch) -> str | None:
    """rlft's own PPO loop builds its torch AdamW and hands it to `accelerator.prepare`; accelerate
    refuses that when the DeepSpeed JSON has an `optimizer` section ("You cannot specify an
    optimizer in the config file and in the code at the same time").

    Source: accelerate/accelerator.py, `Accelerator._prepare_deepspeed` (accelerate 1.15.0)
    """
    if stage.kind != "ppo" or "optimizer" not in launch.deepspeed:
        return None
    return (
        "the DeepSpeed config has an `optimizer` section, and rlft's PPO loop brings its own optimizer (AdamW with "
        "the stage's learning rates), which accelerate refuses; remove the section for this stage"
    )


# Trainer `optim` values whose torch optimizer accelerate maps to a DeepSpeed CPU optimizer of the same kind.
OFFLOAD_FAITHFUL_OPTIM = ("adamw_torch", "adamw_torch_fused", "adagrad")


def offload_replaces_the_optimizer(stage: Any, launch: Launch) -> str | None:
    """With the optimizer offloaded (`offload_optimizer.device` cpu or nvme) and no `optimizer`
    section in the DeepSpeed JSON, the HF trainer builds `trainer.optim` itself, and accelerate
    swaps it for a DeepSpeed CPU optimizer: AdamW for AdamW, Adagrad for Adagrad, and Adam (L2
    weight decay) for anything else, keeping only its learning rate and weight decay. An `optim`
    like sgd or adafactor would silently not be used. (`"zero_force_ds_cpu_optimizer": false`
    in the JSON keeps the trainer's optimizer; DeepSpeed warns that it is slow.)

    Source: accelerate/accelerator.py, `_prepare_deepspeed` calls `map_pytorch_optim_to_deepspeed` (accelerate 1.15.0)
    Source: accelerate/utils/deepspeed.py, `map_pytorch_optim_to_deepspeed` (accelerate 1.15.0)
    """
    if getattr(stage, "trainer_config_class", None) is None or launch.offload_optimizer == "none":
        return None
    if "optimizer" in launch.deepspeed or launch.deepspeed.get("zero_force_ds_cpu_optimizer") is False:
        return None
    optim = (getattr(stage, "trainer", None) or {}).get("optim")
    if optim is None or optim in OFFLOAD_FAITHFUL_OPTIM:
        return None
    return (
        f"trainer.optim {optim} with the optimizer offloaded to {launch.offload_optimizer}: accelerate replaces it by "
        "DeepSpeed's CPU Adam (only AdamW and Adagrad map to their own kind); use adamw_torch, give the DeepSpeed JSON "
        'an optimizer section, or set "zero_force_ds_cpu_optimizer": false in it'
    )


# accelerate YAML keys that accelerate refuses beside a deepspeed_config_file (DeepSpeedPlugin._deepspeed_config_checks).
IGNORED_BESIDE_DEEPSPEED_FILE = (
    "gradient_accumulation_steps",
    "gradient_clipping",
    "zero_stage",
    "offload_optimizer_device",
    "offload_param_device",
    "offload_param_nvme_path",
    "offload_optimizer_nvme_path",
    "zero3_save_16bit_model",
)


def accelerate_settings_beside_deepspeed_file(stage: Any, launch: Launch) -> str | None:
    """An accelerate YAML that names a `deepspeed_config_file` may not also set `mixed_precision`
    (even "no") or DeepSpeed settings inline (`zero_stage`, `gradient_accumulation_steps`,
    offload devices, ...): accelerate stops every process with "When using
    `deepspeed_config_file`, the following accelerate config variables will be ignored". Seen
    here with `mixed_precision: "no"` added to launch/cpu_2proc_zero2.yaml. Precision goes in the
    JSON (`"bf16": {"enabled": "auto"}`).

    Source: accelerate/utils/dataclasses.py, `DeepSpeedPlugin._deepspeed_config_checks` (accelerate 1.15.0)
    Source: accelerate/commands/launch.py, `launch_command` (`mixed_precision` from the config file) (accelerate 1.15.0)
    """
    ds = launch.accelerate.get("deepspeed_config") or {}
    if launch.distributed_type != "DEEPSPEED" or not ds.get("deepspeed_config_file"):
        return None
    found = [k for k in IGNORED_BESIDE_DEEPSPEED_FILE if k in ds]
    if launch.accelerate.get("mixed_precision") is not None:
        found.append("mixed_precision")
    if not found:
        return None
    return (
        f"the accelerate config names deepspeed_config_file and also sets {', '.join(found)}, which accelerate "
        "refuses at start; remove them from the YAML and set them in the DeepSpeed JSON"
    )


def multi_cpu_starts_one_process(stage: Any, launch: Launch) -> str | None:
    """`distributed_type: MULTI_CPU` with several processes and no mpirun hostfile starts ONE
    process: `accelerate launch` only sends the multi-GPU, DeepSpeed, FSDP and TPU types to
    multi-process launchers, the rest to its single-process launcher (which uses mpirun only
    with a hostfile). Seen here: 2 processes asked for, 1 started (no RANK, no WORLD_SIZE). Use
    `distributed_type: MULTI_GPU` as launch/cpu_2proc.yaml does: on a machine without CUDA
    rlft's trainers then train together on the CPU (gloo).

    Source: accelerate/commands/launch.py, `launch_command` (accelerate 1.15.0)
    Source: accelerate/utils/launch.py, `prepare_simple_launcher_cmd_env` (accelerate 1.15.0)
    """
    if launch.distributed_type != "MULTI_CPU" or launch.num_processes < 2:
        return None
    if (launch.accelerate.get("mpirun_config") or {}).get("mpirun_hostfile"):
        return None
    return (
        f"distributed_type MULTI_CPU with num_processes {launch.num_processes} starts one process (accelerate's "
        "single-process launcher); use distributed_type: MULTI_GPU with use_cpu: false, as launch/cpu_2proc.yaml does"
    )


RULES: list[Callable[[Any, Launch], str | None]] = [
    gradual_unfreezing_under_zero,
    prompt_learning_under_zero3,
    deepspeed_values_match_trainer,
    own_loop_with_deepspeed_optimizer,
    offload_replaces_the_optimizer,
    accelerate_settings_beside_deepspeed_file,
    multi_cpu_starts_one_process,
]


# ---------------------------------------------------------------------------------------------
# Checking a pipeline
# ---------------------------------------------------------------------------------------------


def check_launch_rules(pipeline: Any, *, launch: str | None = None) -> None:
    """Raise ConfigError listing every stage x launch combination a rule refuses.

    `launch`: `rlft run --launch`, which overrides the stages' own. Under an outer `accelerate
    launch` (rlft/launched.py) the outer launch is what counts, read from its environment."""
    outer = outer_launch_settings() if outer_launch() else None
    problems = []
    for stage in pipeline.stages:
        parsed = outer or (
            load_launch(launch or stage.launch, base_dir=pipeline.base_dir)
            if (launch or stage.launch)
            else None
        )
        if parsed is None:
            continue  # one plain process: nothing to combine
        for rule in RULES:
            reason = rule(stage, parsed)
            if reason:
                problems.append(
                    f"{pipeline.source}: stages.{stage.name} ({stage.kind}) with launch {parsed.name}: {reason} "
                    f"[rule {rule.__name__}; source: {rule_source(rule)}]"
                )
    if problems:
        raise ConfigError("\n".join(problems))


def load_launch(name: str, *, base_dir: Path) -> Launch:
    """The launch config `name` (shipped name or path) and the DeepSpeed JSON it names (relative to it)."""
    path = find_launch_config(name, base_dir=base_dir)
    try:
        accelerate = yamlio.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"launch {name}: {path} is not valid YAML: {e}") from None
    ds_file = (accelerate.get("deepspeed_config") or {}).get("deepspeed_config_file")
    return Launch(
        name, accelerate, _read_deepspeed(Path(ds_file), relative_to=path.parent) if ds_file else {}
    )


def outer_launch_settings() -> Launch:
    """What the outer `accelerate launch` set up, from the environment it gave this process."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        kind = "DEEPSPEED"
    elif env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        kind = "FSDP"
    else:
        kind = "MULTI_GPU" if int(env.get("WORLD_SIZE", "1")) > 1 else "NO"
    inline = {}
    if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE"):
        inline["zero_stage"] = int(env["ACCELERATE_DEEPSPEED_ZERO_STAGE"])
    if env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"):
        inline["offload_optimizer_device"] = env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"]
    accelerate = {
        "distributed_type": kind,
        "num_processes": int(env.get("WORLD_SIZE", "1")),
        "deepspeed_config": inline,
    }
    ds_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    deepspeed = _read_deepspeed(Path(ds_file), relative_to=shipped("launch")) if ds_file else {}
    return Launch("the outer accelerate launch", accelerate, deepspeed)


def _read_deepspeed(path: Path, *, relative_to: Path) -> dict[str, Any]:
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, relative_to / path]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"launch: deepspeed_config_file {path}: no such file (looked in {relative_to})")
    try:
        return json.loads(found.read_text())
    except ValueError as e:
        raise ConfigError(f"launch: {found} is not valid JSON: {e}") from None


def rule_source(rule: Callable[..., Any]) -> str:
    """The first `Source:` line of a rule's docstring."""
    for line in (rule.__doc__ or "").splitlines():
        if line.strip().startswith("Source:"):
            return line.strip().removeprefix("Source:").strip()
    return "(none given)"


_UNKNOWN = object()


def trainer_value(stage: Any, key: str) -> Any:
    """A stage's trainer setting as its trainer will see it: the merge the stage itself makes
    (rlft.stages.base.TrainerStage.trainer_settings: its `trainer:` key, else the tuning method's
    and rlft's defaults), else the trainer config's own default."""
    from rlft.trainer_fields import MISSING, field_default

    settings = stage.trainer_settings()
    if key in settings:
        return settings[key]
    value = field_default(stage.trainer_config_class, key)
    return _UNKNOWN if value is MISSING else value


def _get_dotted(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
