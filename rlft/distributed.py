"""Rank-aware helpers: which process this is, what every process must call together, and what only
the main one keeps. The rank comes from the launcher's environment (`accelerate launch`, torchrun):
one way, used everywhere, before any process group exists."""

from __future__ import annotations

import os
from typing import Any


def process_rank() -> int:
    """This process's global rank (0 when not launched with several processes)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Only the main process logs, prints and writes (DESIGN.md decision 10)."""
    return process_rank() == 0


def outer_launch() -> bool:
    """Whether this process was started by `accelerate launch` or torchrun (their environment)."""
    env = os.environ
    return (
        world_size() > 1
        or "LOCAL_RANK" in env
        or "ACCELERATE_MIXED_PRECISION" in env  # set by every `accelerate launch`, one process too
    )


def gathered_model(trainer: Any) -> Any:
    """The trained model, whole, on the main process (None on the others). Every process must call it.

    Under DeepSpeed ZeRO-3 or FSDP each process holds a shard of the weights, so saving or
    generating with the local module writes empty tensors or hangs (a known failure elsewhere:
    empty or size-mismatched adapters saved under ZeRO-3). Then the full state dict is gathered
    (a collective) and loaded into a fresh copy of the architecture on the main process.
    """
    from accelerate.utils import DistributedType

    acc = trainer.accelerator
    model = acc.unwrap_model(trainer.model)
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if not (zero3 or acc.distributed_type == DistributedType.FSDP):
        return model if acc.is_main_process else None
    # collective: full weights on the main process (model_wrapped is the DeepSpeed engine / FSDP module)
    state = acc.get_state_dict(trainer.model_wrapped)
    if not acc.is_main_process:
        return None
    return _whole_copy(model, state)


def gathered_submodule(accelerator: Any, wrapped: Any, name: str) -> Any:
    """`gathered_model` for a model prepared with accelerate directly: its submodule `name`
    (e.g. the policy of PPO's actor-critic), whole on the main process, None on the others.
    Every process must call it."""
    from accelerate.utils import DistributedType

    acc = accelerator
    module = getattr(acc.unwrap_model(wrapped), name)
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if not (zero3 or acc.distributed_type == DistributedType.FSDP):
        return module if acc.is_main_process else None
    state = acc.get_state_dict(wrapped)  # collective: the whole wrapped model's weights on the main process
    if not acc.is_main_process:
        return None
    prefix = f"{name}."
    return _whole_copy(module, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def gathered_prepared(accelerator: Any, wrapped: Any) -> Any:
    """`gathered_model` for a model prepared with accelerate directly (rlft's own loops): the model,
    whole on the main process, None on the others. Every process must call it."""
    from accelerate.utils import DistributedType

    acc = accelerator
    model = acc.unwrap_model(wrapped)
    zero3 = acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3
    if not (zero3 or acc.distributed_type == DistributedType.FSDP):
        return model if acc.is_main_process else None
    state = acc.get_state_dict(wrapped)  # collective: the whole weights on the main process
    if not acc.is_main_process:
        return None
    return _whole_copy(model, state)


def _whole_copy(model: Any, state: dict[str, Any]) -> Any:
    """A fresh, unpartitioned copy of `model`'s architecture (and peft adapter) holding `state`."""
    from peft import PeftModel, get_peft_model
    from transformers.integrations import deepspeed as hf_deepspeed

    hf_deepspeed.unset_hf_deepspeed_config()  # build the copy whole, not partitioned by zero.Init
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    fresh = type(base)(base.config)
    if isinstance(model, PeftModel):
        fresh = get_peft_model(fresh, model.peft_config["default"])
    fresh.load_state_dict(state)
    return fresh
