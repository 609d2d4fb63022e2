"""Multitask training's pure pieces: a task's prompts, its rows as token ids, batches, and the
loss of one micro-batch by the task's objective. The stage (rlft/stages/multitask.py) wires them.

Letters: B rows of a micro-batch, T tokens, V vocabulary.

Rows, once encoded (plain lists of ints, so they pickle and slice cheaply):

    sft          {"input_ids", "labels"}: labels are the input ids, -100 where no loss is taken
                 (the prompt of prompt-completion rows; all but the assistant turns of `messages`)
    preference   {"prompt_ids", "chosen_ids", "rejected_ids"}, and once the reference has scored
                 them, "ref_chosen_logps", "ref_rejected_logps" (floats)

A prompt is tokenized as greedy evaluation tokenizes it (rlft.rl.rollout.encode_prompts: a
conversation through the chat template with its generation prompt), and an answer as the tokens
the chat template puts after that prompt (a string answer: its tokens and the eos token), so
training and evaluation see the same prompt tokens.

Objectives (one per task; a micro-batch holds one task's rows):

    sft   mean negative log-likelihood over the micro-batch's label tokens (TRL's SFTTrainer's
          completion-only loss)
    dpo   rlft.losses.preference_loss on the summed log-probs of chosen and rejected answers,
          against the reference's (the stage's starting model, computed once before training):
          DPO (Rafailov et al. 2023, eq. 7) and the variants the `dpo` stage offers
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlft.losses import preference_loss

Tensor = torch.Tensor
IGNORE = -100  # label of a token that takes no loss (the value transformers and TRL use)


# --- a task's prompts ---------------------------------------------------------------------------


def with_additions(prompt: Any, *, prefix: str | None, system_prompt: str | None) -> Any:
    """A prompt (a string, or a list of chat messages) with a task's `prefix` put before the user's
    first words and its `system_prompt` as the conversation's first message (put before the content
    of a system message the prompt already has). A string prompt cannot take a system prompt."""
    if isinstance(prompt, str):
        if system_prompt is not None:
            raise ValueError(
                "system_prompt needs conversational prompts (lists of messages); this task's are plain "
                "text: use prefix instead"
            )
        return f"{prefix}{prompt}" if prefix else prompt
    messages = [dict(m) for m in prompt]
    if prefix:
        first_user = next((m for m in messages if m.get("role") == "user"), None)
        if first_user is None:
            raise ValueError("prefix goes before the first user message, and this conversation has none")
        first_user["content"] = f"{prefix}{first_user['content']}"
    if system_prompt is not None:
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = f"{system_prompt}\n\n{messages[0]['content']}"
        else:
            messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


# --- rows to token ids --------------------------------------------------------------------------


def encode_prompt(tokenizer: Any, prompt: Any) -> list[int]:
    """The prompt's tokens as greedy evaluation encodes them (rlft.rl.rollout.encode_prompts)."""
    from rlft.rl.rollout import encode_prompts

    return encode_prompts(tokenizer, [prompt])[0]


def encode_answer(tokenizer: Any, prompt: Any, answer: Any) -> list[int]:
    """The tokens of `answer` after `prompt`: for a conversation, what the chat template renders
    after the prompt's generation prompt (its end-of-turn token included); for a string, its tokens
    and the eos token."""
    if isinstance(answer, str):
        return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*prompt, *answer], tokenize=False)
    if not full.startswith(head):
        raise ValueError(
            "the chat template renders the prompt with its generation prompt differently from the start of "
            "prompt + answer; it cannot be used to train on answers"
        )
    return tokenizer(full[len(head) :], add_special_tokens=False)["input_ids"]


def encode_sft(tokenizer: Any, row: dict[str, Any], *, max_length: int | None) -> dict[str, list[int]] | None:
    """One SFT row ({prompt, completion}, {messages} or {text}) as input ids and labels, cut to
    `max_length` tokens; None when no label token is left."""
    if "completion" in row:
        prompt = encode_prompt(tokenizer, row["prompt"])
        answer = encode_answer(tokenizer, row["prompt"], row["completion"])
        ids, labels = prompt + answer, [IGNORE] * len(prompt) + answer
    elif "messages" in row:
        out = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        if not any(mask):  # a template without {% generation %} marks: every token trains
            mask = [1] * len(ids)
        labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
    else:
        ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        labels = list(ids)
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def encode_pair(
    tokenizer: Any, row: dict[str, Any], *, max_length: int | None
) -> dict[str, list[int]] | None:
    """One preference row ({prompt, chosen, rejected}) as prompt, chosen and rejected ids; each
    answer cut so that prompt + answer fit `max_length`; None when an answer has no token left."""
    prompt = encode_prompt(tokenizer, row["prompt"])
    chosen = encode_answer(tokenizer, row["prompt"], row["chosen"])
    rejected = encode_answer(tokenizer, row["prompt"], row["rejected"])
    if max_length is not None:
        room = max(max_length - len(prompt), 0)
        chosen, rejected = chosen[:room], rejected[:room]
    if not chosen or not rejected:
        return None
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


# --- batches ------------------------------------------------------------------------------------


def right_pad(sequences: Sequence[Sequence[int]], value: int) -> Tensor:
    """(B, T) long tensor of the sequences, padded on the right with `value`."""
    width = max(len(s) for s in sequences)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


def collate_sft(rows: Sequence[dict[str, list[int]]], *, pad_id: int) -> dict[str, Tensor]:
    """input_ids, attention_mask and labels, each (B, T)."""
    return {
        "input_ids": right_pad([r["input_ids"] for r in rows], pad_id),
        "attention_mask": right_pad([[1] * len(r["input_ids"]) for r in rows], 0),
        "labels": right_pad([r["labels"] for r in rows], IGNORE),
    }


def collate_pairs(rows: Sequence[dict[str, Any]], *, pad_id: int) -> dict[str, Tensor]:
    """The B pairs as 2B sequences, chosen answers first (rows 0..B-1), then rejected (B..2B-1):
    input_ids, attention_mask, labels (2B, T), labels -100 on the prompt and the padding; and the
    reference's log-probs (B,) each when the rows carry them."""
    sequences, labels = [], []
    for key in ("chosen_ids", "rejected_ids"):
        for r in rows:
            sequences.append(r["prompt_ids"] + r[key])
            labels.append([IGNORE] * len(r["prompt_ids"]) + r[key])
    batch = {
        "input_ids": right_pad(sequences, pad_id),
        "attention_mask": right_pad([[1] * len(s) for s in sequences], 0),
        "labels": right_pad(labels, IGNORE),
    }
    if all("ref_chosen_logps" in r for r in rows):
        batch["ref_chosen_logps"] = torch.tensor([r["ref_chosen_logps"] for r in rows])
        batch["ref_rejected_logps"] = torch.tensor([r["ref_rejected_logps"] for r in rows])
    return batch


# --- losses -------------------------------------------------------------------------------------


def token_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(log-prob of each label token (B, T-1), mask of the tokens that count (B, T-1)).

    logits (B, T, V) at position t predict the token at t + 1, so they are shifted against the labels."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE
    picked = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def sequence_logps(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(log π(answer | prompt) summed over each row's label tokens (B,), their number (B,))."""
    logps, mask = token_logps(logits, labels)
    return logps.sum(-1), mask.sum(-1)


def sft_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(mean NLL over the micro-batch's label tokens (a scalar), their number)."""
    logps, mask = token_logps(logits, labels)
    tokens = mask.sum()
    return -logps.sum() / tokens.clamp(min=1), tokens


def dpo_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    loss_type: Sequence[str],
    loss_weights: Sequence[float] | None,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The preference loss of a micro-batch of B pairs laid out as `collate_pairs` does (logits
    (2B, T, V): chosen rows first), and its statistics (TRL's names, means over the pairs):
    rewards/chosen, rewards/rejected (β times the log-ratio to the reference), rewards/margins,
    rewards/accuracies (share of pairs whose chosen reward is the higher)."""
    logps, lengths = sequence_logps(logits, labels)  # (2B,), (2B,)
    b = logps.shape[0] // 2
    chosen, rejected = logps[:b], logps[b:]  # (B,)
    loss = preference_loss(
        list(loss_type),
        list(loss_weights) if loss_weights is not None else None,
        chosen_logps=chosen,
        rejected_logps=rejected,
        ref_chosen_logps=ref_chosen_logps.to(chosen),
        ref_rejected_logps=ref_rejected_logps.to(rejected),
        chosen_lengths=lengths[:b],
        rejected_lengths=lengths[b:],
        beta=beta,
        label_smoothing=label_smoothing,
    )
    with torch.no_grad():
        chosen_rewards = beta * (chosen - ref_chosen_logps.to(chosen))  # (B,)
        rejected_rewards = beta * (rejected - ref_rejected_logps.to(rejected))  # (B,)
        stats = {
            "rewards/chosen": chosen_rewards.mean(),
            "rewards/rejected": rejected_rewards.mean(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        }
    return loss, stats


# --- a task in a run: its rows, reference log-probs, losses and evaluation ------------------------


@dataclass
class LoadedTask:
    """A task of a multitask stage, its rows encoded as above, ready to train and evaluate."""

    cfg: Any  # the task's config (rlft.stages.multitask.SFTTask or DPOTask): name, objective, loss settings
    key: str  # its key path in the pipeline file: stages.<stage>.tasks[i]
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]] | None
    prompts: (
        list[dict[str, Any]] | None
    )  # held-out rows for its reward: `prompt` as the model sees it, `original_prompt`
    reward_fn: Any  # f(prompts, completions, **fields), or None
    report: dict[str, Any]  # the data layer's report, and the rows encoding dropped
    samples: list[dict[str, Any]] = field(default_factory=list)  # its last evaluation's first generations

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def objective(self) -> str:
        return self.cfg.objective


def shard(n: int, rank: int, world: int) -> list[int | None]:
    """This process's indices of n rows (every world-th), padded with None so that every process gets
    as many: under ZeRO-3 every forward pass gathers weights collectively, so each process must run
    as many of them (a padding slot is filled with any row and left out of the results)."""
    mine: list[int | None] = list(range(rank, n, world))
    return mine + [None] * (math.ceil(n / world) - len(mine))


def micro_batch_loss(
    model: Any,
    task: LoadedTask,
    rows: Sequence[dict[str, Any]],
    *,
    pad_id: int,
    device: Any,
    keep: list[int] | None = None,
) -> tuple[Tensor, dict[str, Any], int]:
    """(loss of `rows` by the task's objective, its statistics, tokens in the batch). `keep`: the rows
    that count (the others are padding, see `shard`); all by default."""
    collate = collate_sft if task.objective == "sft" else collate_pairs
    batch = collate(rows, pad_id=pad_id)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits  # (B, T, V); pairs: (2B, T, V), chosen rows first
    labels = batch["labels"].to(device)
    tokens = int(batch["attention_mask"].sum())
    b = len(rows)
    keep = list(range(b)) if keep is None else keep
    if task.objective == "sft":
        loss, n = sft_loss(logits[keep], labels[keep])
        return loss, {"tokens": n}, tokens
    both = keep + [b + k for k in keep]
    loss, stats = dpo_loss(
        logits[both],
        labels[both],
        ref_chosen_logps=batch["ref_chosen_logps"][keep].to(device),
        ref_rejected_logps=batch["ref_rejected_logps"][keep].to(device),
        loss_type=task.cfg.loss_type,
        loss_weights=task.cfg.loss_weights,
        beta=task.cfg.beta,
        label_smoothing=task.cfg.label_smoothing,
    )
    return loss, stats, tokens


def score_reference(
    model: Any,
    tasks: Sequence[LoadedTask],
    accelerator: Any,
    *,
    adapter_off: bool,
    batch_size: int,
    pad_id: int,
) -> None:
    """Put the reference's log-probs of every pair (train and eval) of the preference tasks into their
    rows: `model`'s (prepared; the reference is the stage's starting model, so call this before the
    first step and before a checkpoint is loaded), with its adapter disabled when `adapter_off`. Each
    process scores its share of the pairs; the results are gathered on all. Every process must call it."""
    import contextlib

    from accelerate.utils import gather_object

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    with torch.no_grad(), unwrapped.disable_adapter() if adapter_off else contextlib.nullcontext():
        for task in tasks:
            if task.objective != "dpo":
                continue
            for rows in (task.train, task.eval or []):
                mine = shard(len(rows), accelerator.process_index, accelerator.num_processes)
                scored = []
                for begin in range(0, len(mine), batch_size):
                    ids = mine[begin : begin + batch_size]
                    batch = collate_pairs([rows[i if i is not None else 0] for i in ids], pad_id=pad_id)
                    logits = unwrapped(
                        input_ids=batch["input_ids"].to(accelerator.device),
                        attention_mask=batch["attention_mask"].to(accelerator.device),
                    ).logits
                    logps, _ = sequence_logps(logits, batch["labels"].to(accelerator.device))  # (2B,)
                    b = len(ids)
                    scored += [
                        (i, logps[k].item(), logps[b + k].item()) for k, i in enumerate(ids) if i is not None
                    ]
                for i, chosen, rejected in gather_object(scored) if accelerator.num_processes > 1 else scored:
                    rows[i]["ref_chosen_logps"], rows[i]["ref_rejected_logps"] = chosen, rejected
    unwrapped.train(was_training)


def evaluate_tasks(
    model: Any,
    tasks: Sequence[LoadedTask],
    accelerator: Any,
    *,
    tokenizer: Any,
    pad_id: int,
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, float]:
    """Every task's held-out loss over its eval rows (task/<name>/loss; a preference task's share of pairs
    ranked right too, task/<name>/accuracy), the rows shared out over the processes; and its reward on its
    eval prompts (task/<name>/reward), generated greedily on the main process. Every process must call it."""
    from rlft.rl.rollout import generation_model

    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    sums: dict[str, Tensor] = {}
    with torch.no_grad():
        for task in tasks:
            if not task.eval:
                continue
            mine = shard(len(task.eval), accelerator.process_index, accelerator.num_processes)
            total = torch.zeros(3, dtype=torch.float64)  # loss x weight, weight, pairs ranked right
            for begin in range(0, len(mine), batch_size):
                ids = mine[begin : begin + batch_size]
                rows = [task.eval[i if i is not None else 0] for i in ids]
                keep = [k for k, i in enumerate(ids) if i is not None]
                loss, stats, _ = micro_batch_loss(
                    unwrapped, task, rows, pad_id=pad_id, device=accelerator.device, keep=keep
                )
                if not keep:
                    continue
                if task.objective == "sft":  # a mean over tokens: weighted by them
                    weight, right = float(stats["tokens"]), 0.0
                else:  # a mean over pairs
                    weight, right = float(len(keep)), float(stats["rewards/accuracies"]) * len(keep)
                total += torch.tensor([loss.item() * weight, weight, right], dtype=torch.float64)
            sums[task.name] = total
    metrics: dict[str, float] = {}
    if sums:
        names = sorted(sums)
        stacked = torch.stack([sums[n] for n in names]).to(accelerator.device)
        if accelerator.num_processes > 1:
            stacked = accelerator.reduce(stacked, reduction="sum")
        objectives = {t.name: t.objective for t in tasks}
        for name, (weighted, weight, right) in zip(names, stacked.cpu().tolist(), strict=True):
            metrics[f"task/{name}/loss"] = weighted / weight if weight else float("nan")
            if objectives[name] == "dpo":
                metrics[f"task/{name}/accuracy"] = right / weight if weight else float("nan")
    if any(t.prompts for t in tasks):
        with generation_model(model, accelerator) as generator:
            if accelerator.is_main_process:
                for task in tasks:
                    if task.prompts:
                        metrics[f"task/{task.name}/reward"] = task_reward(
                            generator, tokenizer, task, batch_size=batch_size, max_new_tokens=max_new_tokens
                        )
        accelerator.wait_for_everyone()
    unwrapped.train(was_training)
    return metrics


def task_reward(
    model: Any, tokenizer: Any, task: LoadedTask, *, batch_size: int, max_new_tokens: int
) -> float:
    """The task's mean reward of greedy completions to its eval prompts: the model sees each prompt with the
    task's prefix and system prompt, the reward reads it as the file wrote it (and the row's other fields).
    Keeps the first five as the task's samples."""
    from rlft.evaluation import greedy_completions

    completions = greedy_completions(
        model,
        tokenizer,
        [row["prompt"] for row in task.prompts],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    originals = [row["original_prompt"] for row in task.prompts]
    fields = {
        k: [row.get(k) for row in task.prompts]
        for k in task.prompts[0]
        if k not in ("prompt", "original_prompt")
    }
    rewards = [float(r) for r in task.reward_fn(originals, completions, **fields)]
    task.samples = [
        {"prompt": _one_line(p), "completion": c, "reward": r}
        for p, c, r in zip(originals[:5], completions[:5], rewards[:5], strict=True)
    ]
    return sum(rewards) / len(rewards)


def _one_line(prompt: Any) -> str:
    """A prompt as one line: a conversation's last user message."""
    if isinstance(prompt, str):
        return prompt
    return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), str(prompt))


def format_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The per-task table of the stage log, one line per task (a missing value: -)."""
    columns = [
        "task",
        "objective",
        "train_rows",
        "target_share",
        "share",
        "micro_batches",
        "loss",
        "reward",
        "accuracy",
    ]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return lines
