"""The critic (a value model) and the actor-critic pair PPO trains as one module.

The critic is a separate transformer with a linear head giving one value per token, (B, T) ->
(B, T). Huang et al. 2024 (sec. 7, reference code) initialise it from the reward model: its
body already reads the task, and its score head already predicts the final reward, which is
what the value of the last token must become (gamma = 1). Initialised from the policy instead,
the body is the policy's and the head is new.

    value_model_from(model)   a ValueModel from a reward-stage model (body + its score head)
                              or from a causal LM (body + a fresh head); it reads the policy's
                              token ids, so its vocabulary must be the policy's (checked by the stage)
    ActorCritic(policy, critic)   one module with one forward: (logits, values) for a sequence.
                              One module (and one optimizer, a param group each) is what
                              DeepSpeed and DDP wrap; TRL's PPOv2 did the same
                              (`PolicyAndValueWrapper`).
    SharedActorCritic(policy, head)   the same forward from one pass: a value head on the
                              policy's last hidden states (the `shared` critic design)
    lora_critic(critic, cfg)  the critic's body under LoRA adapters, its head trained fully
                              (the `lora` critic design)

Position ids: sequences are left-padded (rlft.rl.experience), so every forward here computes
`position_ids` from the attention mask, as `generate` does for left-padded prompts; without
them a padded row would see other positions in training than at generation.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

Tensor = torch.Tensor


def position_ids_from_mask(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only: (B, T) -> (B, T) long; padding gets 0.

    What `generate` gives a left-padded prompt (cumsum of the mask, minus one), extended over the
    response, so training forwards see the positions the tokens were sampled at.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class ValueModel(nn.Module):
    """A transformer body and a linear head: one scalar value per token, (B, T) -> (B, T) float32."""

    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    @property
    def config(self) -> Any:
        return self.body.config

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None
    ) -> Tensor:
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        hidden = self.body(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, T, H)
        return self.head(hidden).squeeze(-1).float()  # (B, T)


def lora_critic(
    critic: ValueModel,
    *,
    r: int,
    alpha: float,
    target_modules: str | list[str],
    use_rslora: bool = False,
    use_dora: bool = False,
) -> ValueModel:
    """The critic with LoRA adapters on its body (peft) and its head still trained fully.

    The body's weights freeze; only the adapters (B = 0 at the start, so the critic starts as the
    model it was made from) and the head train. No adapter dropout: the value of a token must be
    the same in the rollout and in training (Huang et al. 2024, sec. 7, for dropout in general).
    """
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=target_modules,
        use_rslora=use_rslora,
        use_dora=use_dora,
    )
    body = get_peft_model(critic.body, peft_cfg)
    for p in critic.head.parameters():
        p.requires_grad_(True)
    return ValueModel(body, critic.head)


def fresh_value_head(hidden_size: int, *, dtype: torch.dtype = torch.float32) -> nn.Linear:
    """A new head: weights ~ N(0, 1 / (H + 1)), bias 0 (Huang et al.'s reference `layer_init` for scalar heads)."""
    head = nn.Linear(hidden_size, 1, dtype=dtype)
    nn.init.normal_(head.weight, std=1 / math.sqrt(hidden_size + 1))
    nn.init.zeros_(head.bias)
    return head


def is_sequence_classifier(folder: str | Path, **kwargs: Any) -> bool:
    """Whether a model folder holds a sequence-classification model (a reward-stage artifact)."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(folder, **kwargs).architectures or []
    return any(a.endswith("ForSequenceClassification") for a in architectures)


def value_model_from(model: nn.Module) -> tuple[ValueModel, str]:
    """A ValueModel made of a loaded model's body, and how its head was made.

    A sequence classifier with one output (a reward stage's artifact) gives its body and its
    score head ("reward head"); a causal LM gives its body, without the LM head, and a fresh
    head ("fresh head"). A peft model (a kept prompt) gives its base model's body.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    body = model.base_model
    score = getattr(model, "score", None)
    if hasattr(score, "modules_to_save"):  # a prompt-tuned reward model's head, as peft wraps it
        score = score.modules_to_save[score.active_adapters[0]]
    if isinstance(score, nn.Linear) and score.out_features == 1:
        return ValueModel(body, score), "reward head"
    if score is not None:
        raise ValueError(
            "a sequence classifier without a one-output linear `score` head cannot start a critic"
        )
    return ValueModel(body, fresh_value_head(model.config.hidden_size, dtype=body.dtype)), "fresh head"


def rescaled_head(head: nn.Linear, *, scale: float, shift: float) -> nn.Linear:
    """A copy of a one-output head computing `scale * head(x) + shift` (with a bias, even if `head` had none).

    A critic started from a reward model should start on the scale of the reward PPO is given:
    a normalized reward model ((r - mean) / std), or one weighted in a sum, scores on another
    scale than its raw head; Huang et al. 2024 normalise the reward head itself for the same reason.
    """
    new = nn.Linear(head.in_features, 1, bias=True, dtype=head.weight.dtype, device=head.weight.device)
    with torch.no_grad():
        new.weight.copy_(head.weight * scale)
        bias = head.bias * scale if head.bias is not None else torch.zeros(1, dtype=new.bias.dtype)
        new.bias.copy_(bias + shift)
    return new


class ActorCritic(nn.Module):
    """The policy and the critic as one module, so that one wrapper (DDP, DeepSpeed) and one optimizer
    hold both. `forward` returns the policy's logits (B, T', V) and the critic's values (B, T).

    T' = T, except for prompt-tuned policies, whose virtual tokens come first: read logits from
    the end (`logits[:, -A - 1 : -1]`), never from the start.
    """

    def __init__(self, policy: nn.Module, critic: ValueModel) -> None:
        super().__init__()
        self.policy = policy
        self.critic = critic

    @property
    def config(self) -> Any:
        """The policy's config (DeepSpeed reads hidden_size from it for its "auto" bucket sizes)."""
        return self.policy.config

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0
    ) -> tuple[Tensor, Tensor]:
        position_ids = position_ids_from_mask(attention_mask)  # (B, T)
        logits = policy_logits(
            self.policy, input_ids, attention_mask, position_ids, logits_to_keep=logits_to_keep
        )
        values = self.critic(input_ids, attention_mask, position_ids)  # (B, T)
        return logits, values


class SharedActorCritic(nn.Module):
    """A policy and a value head on its own last hidden states: one pass of the trunk serves both.

    `forward` returns the policy's logits (B, T', V) and values (B, T) float32, as `ActorCritic`
    does, from a single forward of the policy (`output_hidden_states`: the last entry is the final
    norm's output, the lm_head's input). The value loss's gradient flows into the trunk beside the
    policy loss's (the shared actor-critic of Mnih et al. 2016 and of OpenAI's lm-human-preferences
    with `share_value_network`); with a LoRA policy the frozen trunk is shared by construction and
    the value loss trains the adapters too. `critic` is the head, so that the stage, the optimizer
    (its own param group and learning rate) and checkpoints see the same two attributes as
    `ActorCritic`. A prompt-tuned policy's virtual tokens come first: values are read from the last
    T positions.
    """

    def __init__(self, policy: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.policy = policy
        self.critic = head

    @property
    def config(self) -> Any:
        return self.policy.config

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0
    ) -> tuple[Tensor, Tensor]:
        position_ids = position_ids_from_mask(attention_mask)  # (B, T)
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            output_hidden_states=True,
            **_keep(self.policy, logits_to_keep),
        )
        hidden = out.hidden_states[-1][:, -input_ids.shape[1] :]  # (B, T, H): after any virtual tokens
        values = self.critic(hidden.to(self.critic.weight.dtype)).squeeze(-1).float()  # (B, T)
        return out.logits, values


def shared_value_head(policy: nn.Module) -> nn.Linear:
    """A fresh value head for a policy's hidden states, in the policy's dtype and on its device."""
    weight = next(p for p in policy.parameters())
    head = fresh_value_head(policy.config.hidden_size, dtype=weight.dtype)
    return head.to(weight.device)


def policy_logits(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor,
    *,
    logits_to_keep: int = 0,
) -> Tensor:
    """A causal LM's logits over a left-padded sequence: (B, T) -> (B, T', V).

    T' = T + P for a prompt-tuned policy (its P virtual tokens first; rlft.models.prompt_learning
    places the real tokens after them whatever the padding), else T. logits_to_keep = K > 0: the
    logits of the last K positions only, (B, K, V), for a model whose forward takes
    `logits_to_keep` (transformers' causal LMs); PPO needs the A + 1 positions that predict the
    response, and skipping the prompt's saves the lm_head's matmul and the (B, P, V) softmax there.
    A model without it gives all T' positions: read logits from the end either way.
    """
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        **_keep(model, logits_to_keep),
    ).logits


def _keep(model: nn.Module, logits_to_keep: int) -> dict[str, int]:
    """`{"logits_to_keep": K}` when K > 0 and the (peft-wrapped) model's own forward takes it, else {}."""
    if logits_to_keep <= 0:
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = "logits_to_keep" in inspect.signature(base.forward).parameters
    return {"logits_to_keep": logits_to_keep} if takes else {}


def disable_dropout(model: nn.Module) -> None:
    """Set every dropout probability to 0 (Huang et al. 2024, sec. 7: dropout would make the log-probs of
    the rollout and of training differ for the same weights, biasing the PPO ratio)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):  # functional dropout in attention
            module.attention_dropout = 0.0
