"""Forward and generate for peft's prompt-learning models (prompt and prefix tuning) that are right
under transformers 5, installed on the model by `fix_prompt_learning`.

peft 0.21 gets two things wrong for prompt learning with transformers 5.x:

* positions: peft drops `position_ids` for prompt tuning, so in a left-padded batch a row's real
  tokens sit at positions shifted by its padding, against virtual tokens at 0..P-1; the same
  text gives other log-probs padded than alone (RoPE sees another distance to the prompt);
* generation: peft's `generate` looks for the KV cache under `past_key_values` (transformers 5
  passes `cache`), so with the cache each step sees the prompt and the last token only.

Sequence classifiers (reward models) have the same trouble with positions, and one more
(pooling). The forward of both is ``reward_models.prompt.prompt_forward`` (reward_models scores
reward artifacts without rlft); this module adds the causal LM's `generate`.

Here every forward gives the real tokens positions P + (their index among the real tokens),
whatever the padding: virtual tokens at 0..P-1 (prompt tuning) or in the cache at 0..P-1 (prefix
tuning); that is what peft gives an unpadded row. Generation goes through transformers' own
`generate` on the base model with the prompt in front (`inputs_embeds`) or in the cache
(`cache`), so sampling, logits processors and stopping criteria are transformers'.
`fix_prompt_learning` sets both as attributes of the model instance (peft's `disable_adapter`
swaps `forward` for the base model's and restores ours); models of other methods are untouched.
"""

from __future__ import annotations

import types
from typing import Any

import torch

from reward_models.prompt import fix_forward, is_prefix, prompt_inputs, virtual_embeddings

Tensor = torch.Tensor


def is_prompt_learning(model: Any) -> bool:
    """Whether `model` is a PeftModel with a prompt-learning adapter (prompt or prefix tuning)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def fix_prompt_learning(model: Any) -> Any:
    """Give a prompt-learning PeftModel the forward and generate of this module; returns the model.

    A no-op for any other model and when already fixed.
    """
    if not is_prompt_learning(model) or getattr(model, "_rlft_prompt_fix", False):
        return model
    task = model.active_peft_config.task_type
    if task not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ValueError(
            f"prompt learning: no forward for peft task type {task} (CAUSAL_LM and SEQ_CLS only)"
        )
    if task == "CAUSAL_LM":
        model.generate = types.MethodType(_generate, model)
    return fix_forward(model)


def _generate(self: Any, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
    """transformers' `generate` on the base model with the prompt in front: (B, T) -> (B, T + A).

    `generate` derives positions from the attention mask (cumsum - 1), which with the virtual
    tokens' ones in front gives exactly `prompt_forward`'s positions, so a sampled token's
    log-prob in a later forward is the one it was sampled with. With prompt tuning the prompt
    goes in as `inputs_embeds` and `generate` returns the new tokens only; they are put after
    `input_ids` here, as for any model.
    """
    kwargs.pop("task_ids", None)
    batch, _, mask, _ = prompt_inputs(self, input_ids, None, attention_mask, None)
    base = self.get_base_model()
    if is_prefix(self):
        cache = self.get_prompt(batch)
        return base.generate(input_ids=input_ids, attention_mask=mask, cache=cache, **kwargs)
    embeds = self.word_embeddings(input_ids)
    embeds = torch.cat([virtual_embeddings(self, batch, embeds), embeds], dim=1)
    out = base.generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
    if isinstance(out, torch.Tensor):
        return torch.cat([input_ids, out.to(input_ids.device)], dim=1)
    # return_dict_in_generate: an output object, whose sequences get the prompt in front too
    out.sequences = torch.cat([input_ids, out.sequences.to(input_ids.device)], dim=1)
    return out
