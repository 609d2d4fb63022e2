"""What a PPO step costs in floating-point operations, phase by phase, and how fast the machine multiplies.

The count is the usual dense-transformer one (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", sec. 2.1, table 1; the model-FLOPs utilisation of Chowdhery et al. 2022, "PaLM", appendix B),
made explicit about *which* weights run and *which* gradients are computed, so that a LoRA policy,
a shared-trunk critic and a reference with adapters disabled are each counted for the work they do:

    a forward pass, per token fed           2 * W_run  +  4 * L * d_attn * C
    its backward, per token                 2 * W_run  +  8 * L * d_attn * C    (gradients of the activations)
                                          + 2 * W_train                         (gradients of the weights)

W_run: the weights of every linear map the token goes through (attention q/k/v/o, the MLP, LoRA's
A and B while the adapters are on, and the output head where its logits are computed), W_train the
trainable ones among them, L layers, d_attn = heads * head_dim, C the positions each query attends
to. Each multiply-add is 2 FLOPs. A frozen trunk under LoRA still runs its forward *and* the
activation half of its backward (the gradient must reach the adapters of the lower layers); only
its weight gradients are skipped, so full fine-tuning costs 6 * W per token and LoRA about 4 * W.
(Autograd also skips the input gradient of the first layer's q/k/v when the embeddings are frozen;
the count keeps it, an upper bound by 1/L of those maps. Layer-wise `freeze` tuning is counted as
if the backward reached the first layer.)
Attention is counted over all C positions, as PaLM does (a causal or padded mask saves nothing in
the kernels used here). Not counted: embedding look-ups, norms, activations, softmax, the loss,
the optimizer (all O(H) per token against the O(H^2) matmuls). Padding positions are counted:
they are computed, so the MFU is of the work the machine did (the useful share is lower).

Phases of a step (`ppo_step_flops`), with B rollouts, P prompt positions (left-padded), A response
positions, T = P + A (the shapes of rlft.rl):

    sample    generate: one forward over the P prompt positions, then A - 1 forwards of one token
              with a growing KV cache (context P + k); logits of the last position only
    score     each reward model's forwards, counted from the batches it really ran (`ForwardCounter`)
    forward   the no-grad passes: policy (logits of the A + 1 positions that predict the response:
              `logits_to_keep`), critic (a separate model, or only a value head on the policy's hidden
              states), reference (a copy, or the policy with its adapters off)
    train     ppo_epochs x (forward + backward) of policy and critic over the B rollouts

The machine's rate (`measure_matmul_flops`) is timed on a square matmul in the policy's dtype: on a
CPU it is what torch actually reaches (the practical peak), on a GPU it is below the data sheet's
dense peak; the stage config's `peak_flops` replaces it.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

PHASES = ("sample", "score", "forward", "train")


@dataclass(frozen=True)
class ModelCost:
    """What one token fed through a model costs, read from its modules (`model_cost`).

    layers, attention_width: L and d_attn (= heads * head_dim; grouped keys/values are broadcast to it).
    body: weights of the linear maps of the transformer layers (adapter weights excluded).
    body_trainable: those of them that train (all under full tuning, none under LoRA).
    adapters: LoRA / DoRA A and B weights, all trainable, run while the adapters are on.
    head: the output head's weights, run only at positions whose output is computed: V * H for a causal
        LM's lm_head, H for a value head, num_labels * H for a sequence classifier.
    head_trainable: the trainable part of `head`.
    virtual_tokens: prompt tuning's positions put before every input (they are fed like tokens).
    prefix_tokens: prefix tuning's key/value positions in every layer (attended to, never fed).
    backward_through_body: whether a backward has to run through the layers: something trains
        in them or below them (adapters, layer weights, a soft prompt); False when only the head trains.
    """

    layers: int
    attention_width: int
    body: int
    body_trainable: int
    adapters: int = 0
    head: int = 0
    head_trainable: int = 0
    virtual_tokens: int = 0
    prefix_tokens: int = 0
    backward_through_body: bool = True

    def without_adapters(self) -> ModelCost:
        """The same model with its adapters disabled (a LoRA policy run as its own reference)."""
        return replace(self, adapters=0, virtual_tokens=0, prefix_tokens=0)


def _linear_weights(module: nn.Module) -> int:
    """in * out of a linear map (nn.Linear, or GPT-2's Conv1D), else 0; whole under ZeRO-3's sharding."""
    weight = getattr(module, "weight", None)
    if weight is None or not (isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"):
        return 0
    return int(getattr(weight, "ds_numel", weight.numel()))  # a ZeRO-3 shard's numel() is 0


def head_cost(head: nn.Module) -> ModelCost:
    """A value head alone, run on hidden states another pass computed (the shared-trunk critic): its
    backward is its weight gradient; the gradient into the trunk joins the policy's backward."""
    weights = sum(_linear_weights(m) for m in head.modules())
    trainable = sum(
        _linear_weights(m) for m in head.modules() if _linear_weights(m) and m.weight.requires_grad
    )
    return ModelCost(
        layers=0,
        attention_width=0,
        body=0,
        body_trainable=0,
        head=weights,
        head_trainable=trainable,
        backward_through_body=False,
    )


def _adapter_type(name: str) -> bool:
    parts = name.split(".")
    return any(p in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B") for p in parts)


def _output_head(model: nn.Module) -> nn.Module | None:
    """The module that maps hidden states to the model's outputs: a value head, lm_head or score."""
    head = getattr(model, "head", None)  # rlft.rl.critic.ValueModel
    if isinstance(head, nn.Module) and hasattr(model, "body"):
        return head
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("score", "classifier"):  # sequence classifiers (reward models)
        found = getattr(inner, name, None)
        if isinstance(found, nn.Module):
            return found
    getter = getattr(inner, "get_output_embeddings", None)
    return getter() if getter is not None else None


def _config(model: nn.Module) -> Any:
    body = getattr(model, "body", None)
    return (body if body is not None else model).config


def model_cost(model: nn.Module) -> ModelCost:
    """The `ModelCost` of a causal LM, a sequence classifier or a ValueModel, peft-wrapped or not.

    Linear maps are found by walking the modules (so LoRA's A and B, a kept modules_to_save copy or
    a value head are counted as they run); layers and attention width come from the config. peft's
    `modules_to_save` keeps the original module beside the trained copy: only the copy runs, so the
    original is left out. Prompt and prefix tuning add their virtual positions.
    """
    config = _config(model)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    head_module = _output_head(model)
    head_ids = {id(m) for m in head_module.modules()} if head_module is not None else set()
    body = body_trainable = adapters = head = head_trainable = 0
    for name, module in model.named_modules():
        weights = _linear_weights(module)
        if not weights or ".original_module" in f".{name}":
            continue
        trainable = module.weight.requires_grad
        if id(module) in head_ids:
            head += weights
            head_trainable += weights if trainable else 0
        elif _adapter_type(name):
            adapters += weights
        else:
            body += weights
            body_trainable += weights if trainable else 0
    if head_module is None:  # a bare body (no head): nothing more runs
        head_module = nn.Identity()
    below_head = any(
        p.requires_grad
        for n, p in model.named_parameters()
        if not any(p is q for q in head_module.parameters())
    )
    peft_config = getattr(model, "active_peft_config", None)
    virtual = prefix = 0
    if getattr(peft_config, "is_prompt_learning", False):
        n = int(peft_config.num_virtual_tokens)
        prefix_tuning = peft_config.peft_type.value == "PREFIX_TUNING"
        virtual, prefix = (0, n) if prefix_tuning else (n, 0)
    return ModelCost(
        layers=layers,
        attention_width=heads * head_dim,
        body=body,
        body_trainable=body_trainable,
        adapters=adapters,
        head=head,
        head_trainable=head_trainable,
        virtual_tokens=virtual,
        prefix_tokens=prefix,
        backward_through_body=below_head,
    )


def forward_flops(
    cost: ModelCost, *, rows: int, tokens: int, context: int | None = None, head_tokens: int | None = None
) -> int:
    """FLOPs of one forward of `rows` sequences of `tokens` fed positions each (virtual ones added here).

    context: positions each query attends to (None: all fed positions, plus any prefix);
    head_tokens: positions whose output the head computes (None: every fed position).
    """
    fed = tokens + cost.virtual_tokens
    context = fed + cost.prefix_tokens if context is None else context
    head_tokens = fed if head_tokens is None else head_tokens
    matmuls = 2 * (cost.body + cost.adapters) * fed + 2 * cost.head * head_tokens
    attention = 4 * cost.layers * cost.attention_width * fed * context
    return rows * (matmuls + attention)


def backward_flops(
    cost: ModelCost, *, rows: int, tokens: int, context: int | None = None, head_tokens: int | None = None
) -> int:
    """FLOPs of the backward of that forward: weight gradients of what trains, activation gradients
    through the layers when something in or below them trains (attention: twice its forward)."""
    fed = tokens + cost.virtual_tokens
    context = fed + cost.prefix_tokens if context is None else context
    head_tokens = fed if head_tokens is None else head_tokens
    weight_grads = 2 * (cost.body_trainable + cost.adapters) * fed + 2 * cost.head_trainable * head_tokens
    activation_grads = 0
    if cost.backward_through_body:
        activation_grads = (
            2 * (cost.body + cost.adapters) * fed
            + 2 * cost.head * head_tokens
            + 8 * cost.layers * cost.attention_width * fed * context
        )
    return rows * (weight_grads + activation_grads)


def generation_flops(cost: ModelCost, *, rows: int, prompt_tokens: int, new_tokens: int) -> int:
    """FLOPs of sampling `new_tokens` after a left-padded prompt of `prompt_tokens` positions, KV-cached.

    One forward over the prompt (logits of its last position only: transformers' `logits_to_keep=1`),
    then one per further token, attending to the cache: token k (1-based) of the response is fed at
    step k + 1 and sees the prompt (virtual and prefix positions included) and k positions. Rows that
    ended early keep being computed until the longest stops, so every row counts `new_tokens`.
    """
    if new_tokens <= 0:
        return 0
    prompt = prompt_tokens + cost.virtual_tokens + cost.prefix_tokens
    total = forward_flops(cost, rows=rows, tokens=prompt_tokens, head_tokens=1)
    one = replace(cost, virtual_tokens=0, prefix_tokens=0)  # the virtual positions are in the cache now
    for k in range(1, new_tokens):
        total += forward_flops(one, rows=rows, tokens=1, context=prompt + k, head_tokens=1)
    return total


def ppo_step_flops(
    *,
    policy: ModelCost,
    critic: ModelCost,
    reference: ModelCost,
    rows: int,
    prompt_tokens: int,
    response_tokens: int,
    ppo_epochs: int,
    score_flops: int = 0,
) -> dict[str, int]:
    """FLOPs of one PPO step on this process, by phase (`PHASES`).

    policy: the policy as it trains (LoRA adapters on). critic: a separate value model's cost, or a
    shared-trunk value head's (`head_cost`: it runs on the hidden states of the policy's pass, and
    its gradient joins the policy's one backward through the trunk). reference: its cost
    (`policy.without_adapters()` when it is the policy with its adapters disabled).
    rows, prompt_tokens, response_tokens: B, P and A of the rollout (every pass after sampling
    runs over T = P + A positions; the lm_head of policy and reference over the last A + 1 only). score_flops: what the reward models spent (`ForwardCounter`).
    """
    passes = {"rows": rows, "tokens": prompt_tokens + response_tokens}
    lm = passes | {"head_tokens": response_tokens + 1}  # logits of the positions that predict the response
    policy_forward = forward_flops(policy, **lm)
    critic_forward = forward_flops(critic, **passes)
    train = policy_forward + backward_flops(policy, **lm) + critic_forward + backward_flops(critic, **passes)
    return {
        "sample": generation_flops(
            policy, rows=rows, prompt_tokens=prompt_tokens, new_tokens=response_tokens
        ),
        "score": score_flops,
        "forward": policy_forward + critic_forward + forward_flops(reference, **lm),
        "train": ppo_epochs * train,
    }


class ForwardCounter:
    """Counts the FLOPs of every forward a set of models runs, from the shapes they are really given.

    For reward models, which tokenize the text themselves (their own tokenizer, their own batches):
    a forward pre-hook reads each call's `input_ids` (rows, width) and adds `forward_flops` of the
    model's cost. `take()` returns the sum since the last `take()` and starts again from 0.
    """

    def __init__(self, models: list[nn.Module]) -> None:
        self.flops = 0
        self._handles = []
        for model in models:
            cost = model_cost(model)
            hook = self._hook(cost)
            self._handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))

    def _hook(self, cost: ModelCost):
        def count(module: nn.Module, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            if ids is not None:
                self.flops += forward_flops(cost, rows=ids.shape[0], tokens=ids.shape[1])

        return count

    def take(self) -> int:
        flops, self.flops = self.flops, 0
        return flops

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def reward_models_of(reward_fn: Any) -> list[nn.Module]:
    """The torch models inside a reward (a reward_models.CompositeReward of functions and RewardModels)."""
    parts = [c.fn for c in getattr(reward_fn, "components", [])] or [reward_fn]
    return [p.model for p in parts if isinstance(getattr(p, "model", None), nn.Module)]


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued kernels (CUDA launches are asynchronous; a CPU needs nothing)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Seconds spent in each phase of a step, the device synchronised at each phase's end."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def take(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


def measure_matmul_flops(
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    size: int | None = None,
    seconds: float = 0.2,
) -> float:
    """FLOP/s of a square matmul in `dtype` on `device`: the best of repeated timings over ~`seconds`.

    size: the matrices' side (None: 1024 on a CPU, 8192 on a GPU, large enough to reach the rate
    and small enough to take well under a second). One multiply of n x n matrices is 2 n^3 FLOPs.
    The best repeat is kept, not the mean: another job on the machine only ever slows a repeat down.
    """
    device = torch.device(device)
    n = size or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=generator).to(device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: allocation, kernel selection
    synchronize(device)
    best, spent = 0.0, 0.0
    while spent < seconds or best == 0.0:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        took = time.perf_counter() - start
        spent += took
        best = max(best, 2 * n**3 / took)
    return best


def step_perf(flops: dict[str, int], seconds: dict[str, float], *, rate: float) -> dict[str, float]:
    """The `perf/*` metrics of a step from its FLOPs and seconds by phase and the matmul rate (FLOP/s).

    perf/flops_per_step, perf/mfu (FLOPs / seconds of the whole step / rate), and for each phase
    perf/flops/<phase>, perf/seconds/<phase>, perf/mfu/<phase> (its FLOPs over its own seconds);
    any other entry of `seconds` (e.g. "other") gets its perf/seconds/<name>. Values of this process.
    """
    total_seconds = sum(seconds.values())
    out: dict[str, float] = {
        "perf/flops_per_step": float(sum(flops.values())),
        "perf/mfu": sum(flops.values()) / total_seconds / rate if total_seconds > 0 else 0.0,
        "perf/matmul_flops_per_second": rate,
    }
    for phase in PHASES:
        spent = seconds.get(phase, 0.0)
        out[f"perf/flops/{phase}"] = float(flops.get(phase, 0))
        out[f"perf/seconds/{phase}"] = spent
        out[f"perf/mfu/{phase}"] = flops.get(phase, 0) / spent / rate if spent > 0 else 0.0
    for phase in set(seconds) - set(PHASES):  # time without FLOPs counted: prompts, metrics, checkpoints
        out[f"perf/seconds/{phase}"] = seconds[phase]
    return out
