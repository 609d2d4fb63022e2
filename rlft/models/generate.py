"""`rlft generate`: a quick look at what a stage folder or an export generates.

    rlft generate runs/quickstart/dpo --prompt "shout: a b c"
    printf 'shout: a b\\nshout: q r s\\n' | rlft generate runs/quickstart/dpo --chat

The folder loads through rlft's own loading (`rlft.models.loading`), so a prompt- or prefix-tuned
folder generates with its learned prompt re-attached, as a later stage or the evaluation sees it.
A prompt is one user turn rendered with the tokenizer's chat template and its generation prompt
(what the evaluation does with a conversational prompt); `raw=True` feeds the text as it is, for a
model trained on plain text. Decoding is greedy unless `sample=True` (seeded, at `temperature`).
The completion is the new text up to the first eos, special tokens removed.

`chat` reads lines until an empty line or the end of its input and keeps the conversation: each
answer is generated from every earlier turn, dropping the oldest turns when the conversation no
longer fits the model's context.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.errors import ConfigError

logger = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Decoding:
    """How to pick tokens: greedy, or sampling at `temperature` from a seeded generator."""

    max_new_tokens: int = 64
    sample: bool = False
    temperature: float = 1.0
    seed: int = 0


def load_for_generation(folder: str | Path) -> tuple[Any, Any]:
    """(model, tokenizer) of a model folder, kept prompt re-attached; a reward model is refused."""
    from rlft.models.loading import ResolvedModel, load_causal_lm, load_tokenizer

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            raise ConfigError(
                f"{folder} is a PEFT adapter folder, not a model: give the stage folder it belongs to "
                f"({folder.parent}) or an export of it (rlft export {folder} --merge --out DIR)"
            )
        raise ConfigError(f"{folder}: not a model folder (no config.json); give a stage folder or an export")
    architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or [""])[0]
    if architecture.endswith("ForSequenceClassification"):
        raise ConfigError(
            f"{folder} is a reward model ({architecture}): it scores text, it does not generate any. Score with "
            f"reward_models.RewardModel.from_pretrained('{folder}').score(prompts, completions)"
        )
    resolved = ResolvedModel(str(folder.resolve()), description=str(folder))
    tokenizer, _ = load_tokenizer(resolved)
    model = load_causal_lm(resolved, dtype="auto", tokenizer=tokenizer, log=logger.debug)
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


def complete(model: Any, tokenizer: Any, prompt: str | list[Message], decoding: Decoding) -> str:
    """The model's completion of `prompt`: a conversation (chat template) or raw text."""
    import torch
    from transformers import set_seed

    ids = encode(tokenizer, prompt)
    limit = context_limit(model)
    if limit is not None and len(ids) + decoding.max_new_tokens > limit:
        raise ConfigError(
            f"the prompt has {len(ids)} tokens; with max_new_tokens {decoding.max_new_tokens} it exceeds the "
            f"model's context of {limit} tokens: shorten it or lower --max-new-tokens"
        )
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids], device=device)  # (1, T)
    sampling = (
        {"do_sample": True, "temperature": decoding.temperature} if decoding.sample else {"do_sample": False}
    )
    if decoding.sample:
        set_seed(decoding.seed)
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=decoding.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
            eos_token_id=eos,
            **sampling,
        )
    new = out[0, input_ids.shape[1] :].tolist()  # (A,)
    if eos in new:
        new = new[: new.index(eos)]
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def chat(
    model: Any,
    tokenizer: Any,
    lines: Iterable[str],
    answer: Callable[[str], None],
    decoding: Decoding,
    *,
    system: str | None = None,
) -> list[Message]:
    """Answer each line as a user turn, with the conversation so far, until an empty line or the end.
    Calls `answer(text)` once per turn; returns the conversation."""
    head: list[Message] = [{"role": "system", "content": system}] if system else []
    turns: list[Message] = []
    for line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            break
        turns.append({"role": "user", "content": text})
        turns = fit(tokenizer, head, turns, limit=context_limit(model), reserve=decoding.max_new_tokens)
        reply = complete(model, tokenizer, head + turns, decoding)
        turns.append({"role": "assistant", "content": reply})
        answer(reply)
    return head + turns


def fit(
    tokenizer: Any, head: list[Message], turns: list[Message], *, limit: int | None, reserve: int
) -> list[Message]:
    """`turns` without their oldest exchanges, as few dropped as makes head + turns + `reserve` new
    tokens fit in `limit` tokens; the last user turn always stays (too long alone: `complete` says so)."""
    while limit is not None and len(turns) > 1 and len(encode(tokenizer, head + turns)) + reserve > limit:
        turns = turns[2:]  # one user turn and its answer
        logger.debug(f"chat: dropped the oldest exchange to fit the model's context of {limit} tokens")
    return turns


def encode(tokenizer: Any, prompt: str | list[Message]) -> list[int]:
    """Token ids of raw text, or of a conversation through the chat template with the generation prompt
    (the template supplies any BOS itself), as the evaluation encodes its prompts."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def context_limit(model: Any) -> int | None:
    """Tokens the model can attend to, less a learned prompt's virtual tokens; None when unknown."""
    config = getattr(model, "config", None)
    if hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    peft_config = getattr(model, "active_peft_config", None)
    if getattr(peft_config, "is_prompt_learning", False):
        limit -= peft_config.num_virtual_tokens
    return limit
