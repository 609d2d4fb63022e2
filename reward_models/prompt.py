"""A reward-stage artifact that keeps a learned prompt (prompt or prefix tuning): put the prompt
back on the model and score with it right.

rlft's reward stage saves such a model as its base (with the trained score head) at the folder's
root and the PEFT prompt in ``adapter/``. peft 0.21's own forward for a prompt-tuned sequence
classifier feeds the model ``inputs_embeds`` only, so the model's pooling cannot find the last
real token (it reads the last position: padding, in a right-padded batch), and drops
``position_ids``, so padding shifts a row's tokens against the virtual ones. ``prompt_forward``
gives the real tokens positions P + (their index among the real tokens), whatever the padding,
and pools at the rightmost real token, as the model itself does without a prompt.

``prompt_forward`` is the one forward of every prompt-learning model rlft makes: a classifier's
here, and a causal LM's, which rlft.models.prompt_learning installs with a `generate` to match
(it lives here because reward_models does not import rlft).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

ADAPTER_DIR = "adapter"
PROMPT_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING")


def kept_prompt(folder: str | Path) -> Path | None:
    """The adapter/ of an artifact that keeps a learned prompt, else None."""
    adapter = Path(folder) / ADAPTER_DIR
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    return adapter if str(config.get("peft_type", "")).upper() in PROMPT_TYPES else None


def attach_prompt(model: Any, folder: str | Path) -> Any:
    """`model` (a sequence classifier) with the prompt the folder keeps, scoring through
    `prompt_forward`; the model as is when the folder keeps none."""
    adapter = kept_prompt(folder)
    if adapter is None:
        return model
    task = json.loads((adapter / "adapter_config.json").read_text()).get("task_type")
    if task != "SEQ_CLS":
        raise ValueError(f"{adapter} holds a prompt for a {task} model, not for a sequence classifier")
    from peft import PeftModel

    return fix_forward(PeftModel.from_pretrained(model, adapter))


def fix_forward(model: Any) -> Any:
    """Give a prompt-learning PeftModel `prompt_forward` (once); returns it."""
    if not getattr(model, "_rlft_prompt_fix", False):
        model.forward = types.MethodType(prompt_forward, model)
        model._rlft_prompt_fix = True
    return model


def real_positions(attention_mask: Tensor) -> Tensor:
    """Each real token's index among its row's real tokens: (B, T) -> (B, T) long; padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prompt_inputs(
    model: Any, input_ids: Tensor | None, inputs_embeds: Tensor | None, attention_mask, position_ids
):
    """(batch, P, mask with the virtual tokens in front (B, P + T), real positions (B, T))."""
    import torch

    ref = input_ids if input_ids is not None else inputs_embeds
    batch, length = ref.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(batch, length, dtype=torch.long, device=ref.device)
    if position_ids is None:
        position_ids = real_positions(attention_mask)
    n_virtual = model.active_peft_config.num_virtual_tokens
    ones = torch.ones(batch, n_virtual, dtype=attention_mask.dtype, device=attention_mask.device)
    return batch, n_virtual, torch.cat([ones, attention_mask], dim=1), position_ids


def is_prefix(model: Any) -> bool:
    return model.active_peft_config.peft_type.value == "PREFIX_TUNING"


def virtual_embeddings(model: Any, batch: int, like: Tensor) -> Tensor:
    return model.get_prompt(batch_size=batch).to(like.dtype)  # (B, P, H)


def prefixed_inputs(
    model: Any,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    attention_mask: Tensor | None,
    position_ids: Tensor | None,
) -> dict[str, Any]:
    """The base model's inputs with the prompt in front, masks and positions covering it.

    Prefix tuning: the input as given, the prefix in the cache, positions P + (real index).
    Prompt tuning: the virtual embeddings before the input's (`inputs_embeds`, P + T long),
    positions 0..P-1 for them and P + (real index) for the input.
    """
    import torch

    batch, n_virtual, mask, positions = prompt_inputs(
        model, input_ids, inputs_embeds, attention_mask, position_ids
    )
    if is_prefix(model):
        return {
            "input_ids": input_ids,
            "inputs_embeds": inputs_embeds,
            "attention_mask": mask,
            "position_ids": positions + n_virtual,
            "cache": model.get_prompt(batch, max_cache_len=mask.shape[1]),
        }
    if inputs_embeds is None:
        inputs_embeds = model.word_embeddings(input_ids)
    virtual = torch.arange(n_virtual, device=positions.device).expand(batch, -1)  # (B, P)
    return {
        "inputs_embeds": torch.cat([virtual_embeddings(model, batch, inputs_embeds), inputs_embeds], dim=1),
        "attention_mask": mask,
        "position_ids": torch.cat([virtual, positions + n_virtual], dim=1),
    }


def prompt_forward(
    self: Any,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    labels: Tensor | None = None,
    position_ids: Tensor | None = None,
    **kwargs: Any,
) -> Any:
    """peft's forward with positions that do not depend on padding, for the model's task:

    - a causal LM: logits (B, P + T, V) for prompt tuning (the virtual positions first, as peft
      returns them; no loss on them), (B, T, V) for prefix tuning;
    - a sequence classifier (a reward model's score): logits (B, num_labels), pooled by the
      model's own rule: the rightmost token that is not padding (from `input_ids` and the model's
      pad_token_id), else the last position the attention mask keeps.
    """
    import torch

    classifier = self.active_peft_config.task_type == "SEQ_CLS"
    if classifier and labels is not None:
        raise NotImplementedError(
            "prompt learning on a sequence classifier: labels are not supported; use the logits"
        )
    kwargs.pop("task_ids", None)
    inputs = prefixed_inputs(self, input_ids, inputs_embeds, attention_mask, position_ids)
    base = self.get_base_model()
    if not classifier:
        if labels is not None and not is_prefix(self):  # no loss on the virtual tokens
            ignore = torch.full((labels.shape[0], self.active_peft_config.num_virtual_tokens), -100)
            labels = torch.cat([ignore.to(labels), labels], dim=1)
        return base(**inputs, labels=labels, **kwargs)
    if is_prefix(self):  # the model pools from input_ids itself
        return base(**inputs, **kwargs)
    return _pooled_scores(base, inputs, input_ids, self.active_peft_config.num_virtual_tokens, **kwargs)


def _pooled_scores(
    base: Any, inputs: dict[str, Any], input_ids: Tensor | None, n_virtual: int, **kwargs: Any
) -> Any:
    """A prompt-tuned classifier's scores: the body on the prompted inputs, the head at the rightmost real token."""
    import torch
    from transformers.modeling_outputs import SequenceClassifierOutputWithPast

    body = getattr(base, base.base_model_prefix)
    hidden = body(**inputs, **kwargs).last_hidden_state  # (B, P + T, H)
    head = base.score if hasattr(base, "score") else base.classifier
    logits = head(hidden[:, n_virtual:])  # (B, T, num_labels)
    pad_id = base.config.get_text_config().pad_token_id
    if input_ids is not None and pad_id is not None:
        real = input_ids != pad_id
    else:
        real = inputs["attention_mask"][:, n_virtual:].bool()
    index = torch.arange(real.shape[1], device=logits.device)
    last = (index * real.to(logits.device).long()).argmax(-1)  # (B,) the rightmost real token
    return SequenceClassifierOutputWithPast(
        logits=logits[torch.arange(len(last), device=logits.device), last]
    )
