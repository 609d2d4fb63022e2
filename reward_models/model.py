"""A reward-stage artifact as a reward function: scores (prompt, completion) text in its own tokens.

The artifact is a plain Hugging Face folder: an ``AutoModelForSequenceClassification`` with one
output (``num_labels=1``), its tokenizer (with a chat template for conversational data) and,
optionally, ``reward_stats.json`` = ``{"mean": float, "std": float, "n": int}``, the rewards'
statistics on the reward stage's training responses, used by ``normalize=True``.

Text is encoded exactly as TRL's ``RewardTrainer`` encodes training pairs
(``trl/trainer/reward_trainer.py``, ``_prepare_dataset``), so a completion scores the same at
inference as it did in training:

- conversational (the prompt or the completion is a list of messages):
  ``tokenizer.apply_chat_template(prompt + completion, tokenize=True)``, no generation prompt;
- standard (both strings): ``tokenizer(prompt + completion)`` after appending the eos token to the
  completion unless it already ends with it (special tokens such as a BOS are added as the
  tokenizer does by default, as TRL does).

Batches are right-padded (as TRL's ``DataCollatorForPreference``) with the model's
``pad_token_id``; the model reads the score at the last non-pad token of each row.

Policy and reward model may use different tokenizers: policy token ids are decoded to text
(``decode_policy_ids``) and re-encoded here (``RewardModel.score_token_ids``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reward_models.prompt import attach_prompt

STATS_FILE = "reward_stats.json"  # {"mean": float, "std": float, "n": int}, written by the reward stage

Message = dict[str, Any]
Text = str | list[Message]  # raw text, or a conversation (TRL's conversational format)

_DTYPES = ("float32", "bfloat16", "float16", "auto")


class RewardModelError(ValueError):
    """A reward model folder that cannot be loaded or used; the message says why and what to do."""


class RewardModel:
    """A sequence-classification reward model and its tokenizer, scoring (prompt, completion) pairs.

    Also a reward function with the one signature: ``rm(prompts, completions, **fields)``
    (``fields`` are accepted and ignored). Build it with ``RewardModel.from_pretrained(path)``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        stats: dict[str, float] | None = None,
        normalize: bool = False,
        batch_size: int = 16,
        max_length: int | None = None,
        name: str = "reward_model",
    ) -> None:
        if batch_size < 1:
            raise RewardModelError(f"reward model '{name}': batch_size must be at least 1 (got {batch_size})")
        if max_length is not None and max_length < 1:
            raise RewardModelError(f"reward model '{name}': max_length must be at least 1 (got {max_length})")
        if normalize and stats is None:
            raise RewardModelError(
                f"reward model '{name}': normalize=True needs {STATS_FILE} "
                '({"mean": ..., "std": ..., "n": ...}) in the folder; the reward stage writes it, '
                "or set normalize: false"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stats = stats
        self.normalize = normalize
        self.batch_size = batch_size
        self.max_length = max_length
        self.name = name
        self.__name__ = name  # TRL names a callable reward by its __name__ in its logs
        # SequenceClassification models find the score at the last token that is not pad_token_id.
        text_config = model.config.get_text_config()
        if text_config.pad_token_id is None:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            if pad_id is None:
                raise RewardModelError(
                    f"reward model '{name}': neither the model config nor the tokenizer has a pad or eos "
                    "token; save the reward model with config.pad_token_id set"
                )
            text_config.pad_token_id = pad_id
        self.pad_token_id: int = text_config.pad_token_id

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | None = None,
        dtype: str = "float32",
        normalize: bool = False,
        batch_size: int = 16,
        max_length: int | None = None,
    ) -> RewardModel:
        """Load a reward-stage artifact.

        device: where the model runs; None means cuda when available, else cpu.
        dtype: the weights' dtype once loaded: float32, bfloat16, float16 or auto.
        normalize: return (score - mean) / std with the folder's reward_stats.json.
        batch_size: sequences per forward pass.
        max_length: longest sequence in tokens; longer ones keep their last max_length tokens
            (the end of the completion, where the score is read). None: no truncation.
        """
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(path).expanduser()
        name = folder.name or str(folder)
        if not folder.is_dir():
            raise RewardModelError(f"reward model '{path}': no such folder (give a reward stage's artifact)")
        if not (folder / "config.json").is_file():
            raise RewardModelError(
                f"reward model '{path}': no config.json; the folder must be a Hugging Face model "
                "saved with save_pretrained"
            )
        if dtype not in _DTYPES:
            raise RewardModelError(
                f"reward model '{path}': dtype '{dtype}' is not one of {', '.join(_DTYPES)}"
            )

        config = AutoConfig.from_pretrained(folder)
        architectures = getattr(config, "architectures", None) or []
        if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
            raise RewardModelError(
                f"reward model '{path}': the folder holds a {', '.join(architectures)}, not a reward model; "
                "a reward stage saves an AutoModelForSequenceClassification with num_labels=1"
            )
        if config.num_labels != 1:
            raise RewardModelError(
                f"reward model '{path}': the score head has {config.num_labels} outputs; a reward model has "
                "one (num_labels=1)"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as e:
            raise RewardModelError(
                f"reward model '{path}': cannot load its tokenizer ({e}); save the tokenizer into the folder"
            ) from None
        model, info = AutoModelForSequenceClassification.from_pretrained(
            folder,
            dtype=dtype if dtype == "auto" else getattr(torch, dtype),
            output_loading_info=True,
        )
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise RewardModelError(
                f"reward model '{path}': weights missing from the folder: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}; these would be random. Save the whole "
                "sequence-classification model (score head included; a LoRA adapter merged first)"
            )
        try:
            # a prompt/prefix-tuned reward stage keeps its prompt in adapter/
            model = attach_prompt(model, folder)
        except ValueError as e:
            raise RewardModelError(f"reward model '{path}': {e}") from None
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            model.to(device),
            tokenizer,
            stats=load_reward_stats(folder),
            normalize=normalize,
            batch_size=batch_size,
            max_length=max_length,
            name=name,
        )

    def encode(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[list[int]]:
        """Token ids of each prompt + completion, as TRL's RewardTrainer tokenizes a training pair."""
        _check_lengths(self.name, prompts, completions)
        ids = [self._encode_one(p, c, i) for i, (p, c) in enumerate(zip(prompts, completions, strict=True))]
        if self.max_length is not None:
            ids = [x[-self.max_length :] for x in ids]
        return ids

    def score(self, prompts: Sequence[Text], completions: Sequence[Text]) -> list[float]:
        """One reward per (prompt, completion): the score head's output (normalized if asked)."""
        import torch

        ids = self.encode(prompts, completions)
        scores = [0.0] * len(ids)
        # Shortest first, so each batch pads little; the scores go back in input order.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        device = self.model.device
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in rows)
                input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (B, T)
                attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
                for b, i in enumerate(rows):  # right padding, as in training
                    input_ids[b, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    attention_mask[b, : len(ids[i])] = 1
                logits = self.model(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
                ).logits  # (B, 1): read at each row's last non-pad token
                for i, value in zip(rows, logits[:, 0].float().tolist(), strict=True):
                    scores[i] = value
        if self.normalize:
            mean, std = self.stats["mean"], self.stats["std"]
            scores = [(s - mean) / std for s in scores]
        return scores

    def __call__(self, prompts: Sequence[Text], completions: Sequence[Text], **fields: Any) -> list[float]:
        return self.score(prompts, completions)

    def score_token_ids(
        self,
        policy_tokenizer: Any,
        prompt_ids: Sequence[Sequence[int]],
        completion_ids: Sequence[Sequence[int]],
    ) -> list[float]:
        """Score policy tokens: decode them with the policy's tokenizer, re-encode with ours.

        See ``decode_policy_ids`` for how ids become text. Where the raw prompts are at hand
        (conversations especially), prefer ``score(prompts, decoded_completions)``: decoding
        skips special tokens, so a chat-rendered prompt loses its role tags.
        """
        prompts, completions = decode_policy_ids(policy_tokenizer, prompt_ids, completion_ids)
        return self.score(prompts, completions)

    def _encode_one(self, prompt: Text, completion: Text, row: int) -> list[int]:
        tokenizer = self.tokenizer
        if isinstance(prompt, str) and isinstance(completion, str):
            eos = tokenizer.eos_token
            if eos is not None and not completion.endswith(eos):
                completion = completion + eos  # TRL's add_eos, on the completion before joining
            ids = tokenizer(text=prompt + completion)["input_ids"]
        else:
            if tokenizer.chat_template is None:
                raise RewardModelError(
                    f"reward model '{self.name}': row {row} is conversational but the tokenizer has no chat "
                    "template; save the reward model's tokenizer with the chat template it was trained with"
                )
            messages = _as_messages(prompt, "user") + _as_messages(completion, "assistant")
            ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        if not ids:
            raise RewardModelError(f"reward model '{self.name}': row {row} encodes to no tokens")
        return list(ids)


def decode_policy_ids(
    policy_tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
) -> tuple[list[str], list[str]]:
    """Policy token ids -> (prompt texts, completion texts), for a reward model with another tokenizer.

    Special tokens (padding on either side, eos, role tags) are skipped. A completion is cut at
    its first eos token: what follows is padding (even when pad and eos are the same token).
    Rows may be lists or 1-D tensors.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(
            f"decode_policy_ids: {len(prompt_ids)} prompts but {len(completion_ids)} completions"
        )
    eos_id = policy_tokenizer.eos_token_id
    prompts, completions = [], []
    for p, c in zip(prompt_ids, completion_ids, strict=True):
        p, c = _as_list(p), _as_list(c)
        if eos_id is not None and eos_id in c:
            c = c[: c.index(eos_id)]
        prompts.append(policy_tokenizer.decode(p, skip_special_tokens=True))
        completions.append(policy_tokenizer.decode(c, skip_special_tokens=True))
    return prompts, completions


def reward_stats(scores: Sequence[float]) -> dict[str, float | int]:
    """``{"mean", "std", "n"}`` of rewards, the contents of reward_stats.json (std with n - 1)."""
    n = len(scores)
    if n < 2:
        raise ValueError(f"reward_stats: need at least 2 scores for a standard deviation (got {n})")
    mean = math.fsum(scores) / n
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / (n - 1))
    return {"mean": mean, "std": std, "n": n}


def load_reward_stats(folder: str | Path) -> dict[str, float | int] | None:
    """The folder's reward_stats.json, checked; None when there is none."""
    file = Path(folder) / STATS_FILE
    if not file.is_file():
        return None
    try:
        stats = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RewardModelError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(stats, dict) or not {"mean", "std", "n"} <= stats.keys():
        raise RewardModelError(f'{file}: expected {{"mean": float, "std": float, "n": int}}, got {stats!r}')
    mean, std, n = stats["mean"], stats["std"], stats["n"]
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (mean, std, n))
    if not numbers or not math.isfinite(mean) or not math.isfinite(std) or std <= 0:
        raise RewardModelError(f"{file}: mean and std must be finite numbers and std > 0 (got {stats!r})")
    return {"mean": float(mean), "std": float(std), "n": int(n)}


def _as_messages(value: Text, role: str) -> list[Message]:
    """A conversation as is; a string becomes one message with ``role``."""
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def _as_list(ids: Any) -> list[int]:
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def _check_lengths(name: str, prompts: Sequence[Any], completions: Sequence[Any]) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{name}: {len(prompts)} prompts but {len(completions)} completions")
