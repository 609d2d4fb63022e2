"""The reference model of the preference stages (DPO, KTO): right by construction, its log-probs cached.

Right by construction (DESIGN.md decision 4):
- The reference is the stage's starting model unless the stage names one (`reference:`).
- A starting model that is only a LoRA/DoRA adapter (a folder with `adapter_config.json` and no
  model of its own) is merged into its base before training: then "adapter disabled" and "the
  policy at step 0" both are exactly the previous stage's model. Loading the adapter unmerged and
  training it on, the reference would be the base *without* the previous stage's adapter
  (LLaMA-Factory's SFT->DPO LoRA pitfall: DPO loss 0 and accuracy 1.0 from the first steps).
  rlft's own LoRA artifacts are merged when saved (rlft.models.tuning.save_model) already.
- A starting model that keeps a learned prompt (an rlft prompt/prefix-tuning artifact) is its own
  reference at step 0, prompt included (disabling adapters would drop the prompt); its reference
  log-probs are then always precomputed (see plan_reference).

Cached log-probs: with `precompute_reference: true` TRL computes the reference log-probs of the
train and eval sets once, before training (`_precompute_ref_logps`). `ReferenceMixin` wraps that
method: the columns it adds are stored under `<cache>/ref_logps/<key>/` and a later stage with the
same key (another β, another loss, the next point of a sweep) reads them instead of running the
reference model. The key is the sha256 of

    reference model content hash   (an upstream stage's artifact_hash, a folder's content hash, ...)
    data content hash              (the token ids TRL feeds the reference: prompt, chosen, rejected)
    max_length, chat template      (truncation and rendering change the log-probs)
    trainer and its settings       (dpo/kto; ld_alpha, truncation mode, KTO's KL pairing, bf16/fp16)

so a hit is always the same numbers. `<cache>` is `runs/<pipeline>/cache/`, or `$RLFT_CACHE_DIR`
when set (`rlft sweep` sets it to the sweep's folder, so its points share one cache).

The functions that take a stage's `cfg` take a DPO, KTO or (`reference_source`) PPO stage config,
whose modules sit above this one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlft.artifacts import hash_json, read_json
from rlft.config import ModelSource
from rlft.stages.base import StageContext

logger = logging.getLogger(__name__)

CACHE_FILE = "ref_logps.safetensors"  # one float32 tensor (N,) per column TRL adds
KEY_FILE = "key.json"  # what the key was made of, the columns and the number of rows


# --- models -----------------------------------------------------------------------------------


def is_adapter_folder(path: str | Path) -> bool:
    """A PEFT adapter saved alone: adapter_config.json and no model config beside it."""
    folder = Path(path)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def load_merged_model(
    resolved: Any, *, dtype: str, tokenizer: Any, log: Callable[[str], None], frozen: bool = False
) -> Any:
    """A starting model (or, `frozen`, a reference) from a resolved source (rlft.models.loading.ResolvedModel).

    An adapter-only folder is loaded onto its base and merged into one plain model. Anything else
    loads as rlft.models.loading does (an rlft prompt/prefix artifact comes back with its kept prompt).
    """
    from rlft.models import loading

    if not is_adapter_folder(resolved.name_or_path):
        if frozen:
            return loading.load_reference(resolved, dtype=dtype, tokenizer=tokenizer, log=log)
        return loading.load_causal_lm(resolved, dtype=dtype, tokenizer=tokenizer, log=log)
    from peft import PeftModel

    folder = Path(resolved.name_or_path)
    base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        from rlft.errors import ConfigError

        raise ConfigError(f"{folder}/adapter_config.json names no base_model_name_or_path to merge into")
    model = loading.load_causal_lm(
        loading.ResolvedModel(base, kwargs=resolved.kwargs, description=base),
        dtype=dtype,
        tokenizer=tokenizer,
        log=log,
    )
    if _is_prompt_learning(folder):
        # virtual tokens cannot be merged into weights: base + prompt (its reference is then a frozen copy)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=not frozen)
        log(f"put the prompt in {folder} on its base {base} (prompt learning cannot be merged)")
    else:
        model = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
        log(
            f"merged the adapter in {folder} into its base {base}: the model is the adapted one, as one model"
        )
    if frozen:
        model.eval()
        model.requires_grad_(False)
    return model


def _is_prompt_learning(folder: Path) -> bool:
    from peft import PeftConfig

    return bool(PeftConfig.from_pretrained(str(folder)).is_prompt_learning)


def same_source(a: ModelSource | None, b: ModelSource | None) -> bool:
    return a is not None and b is not None and a.model_dump() == b.model_dump()


def source_content_hash(source: ModelSource, ctx: StageContext) -> str:
    """The content hash of a model source, as the pipeline computes it for stage.json's inputs.

    An upstream stage's hash is the `artifact_hash` its stage.json records (content of the weights,
    configs and tokenizer), so copies of one artifact (sweep points) share it.
    """
    from rlft.models.loading import source_hash

    artifact_hashes = {
        name: (read_json(Path(path) / "stage.json") or {}).get("artifact_hash") or f"unhashed:{path}"
        for name, path in ctx.model_paths.items()
    }
    content = source_hash(
        source,
        model_paths=ctx.model_paths,
        artifact_hashes=artifact_hashes,
        run_dir=ctx.run_dir,
        base_dir=ctx.base_dir,
    )
    return f"{content}|{source.dtype}|{source.subfolder or ''}|{source.gguf_file or ''}"


# --- the cache ----------------------------------------------------------------------------------


def hash_columns(dataset: Any, columns: tuple[str, ...]) -> str:
    """sha256 of the values of `columns` (token-id lists), row by row, in dataset order."""
    h = hashlib.sha256(json.dumps(list(columns)).encode())
    present = [c for c in columns if c in dataset.column_names]
    h.update(json.dumps(present).encode())
    for batch in dataset.select_columns(present).iter(batch_size=1024):
        h.update(json.dumps([batch[c] for c in present], separators=(",", ":")).encode())
    return h.hexdigest()


class RefLogpsCache:
    """Reference log-probs on disk, one folder per key: `<root>/<key>/{ref_logps.safetensors,key.json}`.

    `identity` holds what the key is made of besides the data (reference hash, max_length, chat
    template, trainer settings). Writes are atomic: a temp folder renamed into place.
    """

    def __init__(self, root: Path, *, identity: dict[str, Any], log: Callable[[str], None] = logger.info):
        self.root = Path(root)
        self.identity = identity
        self.log = log
        self.events: list[dict[str, Any]] = []  # one per split looked up: split, status, key, rows, seconds

    def key(self, dataset: Any, columns: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
        parts = {**self.identity, "data": hash_columns(dataset, columns), "rows": len(dataset)}
        return hash_json(parts), parts

    def load(self, key: str, *, rows: int) -> Any | None:
        """The cached columns as a Dataset of `rows` rows, or None (missing, unreadable, wrong size)."""
        from datasets import Dataset, Features, Value
        from safetensors.torch import load_file

        folder = self.root / key
        try:
            meta = json.loads((folder / KEY_FILE).read_text())
            tensors = load_file(folder / CACHE_FILE)
        except (OSError, ValueError):
            return None
        columns = meta.get("columns", [])
        if meta.get("rows") != rows or set(columns) != set(tensors) or not columns:
            return None
        features = Features({c: Value("float32") for c in columns})
        return Dataset.from_dict({c: tensors[c].tolist() for c in columns}, features=features)

    def store(self, key: str, parts: dict[str, Any], columns: Any) -> Path:
        """Write `columns` (a Dataset of float columns) under the key; a racing writer's copy wins."""
        import torch
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / key
        tmp = self.root / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        tensors = {c: torch.tensor(columns[c], dtype=torch.float32) for c in columns.column_names}
        save_file(tensors, tmp / CACHE_FILE)
        meta = {"key": key, "parts": parts, "columns": columns.column_names, "rows": len(columns)}
        (tmp / KEY_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:  # another process stored the same key first: same numbers, keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        return final


class ReferenceMixin:
    """Mixin for TRL's DPOTrainer / KTOTrainer: the reference is the starting model; its
    precomputed log-probs go through a RefLogpsCache. Put it first: `(ReferenceMixin, DPOTrainer)`.

    1. Given a PeftModel and no ref_model, TRL adds a "ref" adapter, a copy of the new adapter at its
       initial values, and uses it as the reference. For LoRA that equals "adapters disabled" (B = 0
       at init), for other adapters (prompt tuning, ...) it does not. rlft removes the copy
       (`drop_adapter_copy`), so the reference is the starting model with adapters disabled: the
       previous stage's model. (Kept when the start itself carries the prompt: see plan_reference.)
    2. `_precompute_ref_logps` looks the split up in the cache first; on a hit the reference model
       never runs; on a miss TRL computes the columns as usual and they are stored.
       `ref_input_columns` are the token-id columns the reference reads (the data part of the key).
    """

    ref_input_columns: tuple[str, ...] = ()

    def __init__(
        self,
        *args: Any,
        ref_cache: RefLogpsCache | None = None,
        drop_adapter_copy: bool = True,
        **kwargs: Any,
    ):
        self.ref_cache = ref_cache  # set before TRL's __init__, which precomputes
        self.drop_adapter_copy = drop_adapter_copy
        super().__init__(*args, **kwargs)
        # Precomputed: the copy has served (its log-probs are in the data); else drop it if asked.
        self.drop_adapter_copy = drop_adapter_copy or self.precompute_ref_logps
        self._drop_reference_adapter_copy()  # also keeps a stray adapter/ref/ out of the saved artifact

    def _drop_reference_adapter_copy(self) -> None:
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        if self.drop_adapter_copy and "ref" in (getattr(model, "peft_config", None) or {}):
            model.delete_adapter("ref")  # "default" stays the active, trained adapter

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        self._drop_reference_adapter_copy()  # runs inside TRL's __init__, before our own __init__ ends
        cache = self.ref_cache
        if cache is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        from accelerate.utils import broadcast_object_list
        from datasets import concatenate_datasets

        start = time.time()
        key, parts = cache.key(dataset, self.ref_input_columns)
        cached = cache.load(key, rows=len(dataset))
        # Every process must take the same branch (a miss runs collectives): the main process decides.
        hit = [cached is not None]
        broadcast_object_list(hit, from_process=0)
        if hit[0] and cached is None:  # written by another process just after this one looked
            cached = cache.load(key, rows=len(dataset))
            if cached is None:
                from rlft.errors import ConfigError

                raise ConfigError(
                    f"reference log-prob cache {cache.root / key}: the main process reads it, this one cannot; "
                    "processes on several machines need the cache on a shared file system (set RLFT_CACHE_DIR)"
                )
        if hit[0]:
            seconds = time.time() - start
            cache.events.append(_event(name, "hit", key, len(dataset), seconds))
            cache.log(
                f"reference log-probs of {name} ({len(dataset)} rows): cache hit {cache.root / key} "
                f"({seconds:.1f} s; the reference model did not run)"
            )
            return concatenate_datasets([dataset, cached], axis=1)

        out = super()._precompute_ref_logps(dataset, name, batch_size)
        added = [c for c in out.column_names if c not in dataset.column_names]
        seconds = time.time() - start
        where = cache.root / key
        if self.accelerator.is_main_process:
            where = cache.store(key, parts, out.select_columns(added))
        cache.events.append(_event(name, "miss", key, len(dataset), seconds))
        cache.log(
            f"reference log-probs of {name} ({len(dataset)} rows): cache miss, computed in {seconds:.1f} s, "
            f"stored in {where}"
        )
        return out


def _event(split: str, status: str, key: str, rows: int, seconds: float) -> dict[str, Any]:
    return {"split": split, "status": status, "key": key, "rows": rows, "seconds": round(seconds, 3)}


def reference_trainer_class(base: type) -> type:
    """`base` (TRL's DPOTrainer or KTOTrainer) with rlft's ReferenceMixin."""
    columns = {
        "DPOTrainer": ("prompt_ids", "chosen_ids", "rejected_ids"),
        "KTOTrainer": ("prompt_ids", "completion_ids", "KL_completion_ids"),
    }[base.__name__]
    return type(f"{base.__name__}WithReference", (ReferenceMixin, base), {"ref_input_columns": columns})


# --- a stage's reference ------------------------------------------------------------------------


@dataclass
class ReferencePlan:
    """How a stage's reference is made. See `plan_reference`."""

    ref_model: Any  # the ref_model to give TRL's trainer; None: TRL's own (see `drop_adapter_copy`)
    precompute: bool  # reference log-probs computed before training (forced for a kept-prompt start)
    drop_adapter_copy: bool  # remove TRL's "ref" copy of the policy's adapter (reference = adapters disabled)
    description: str  # what the reference is, for the log


def plan_reference(cfg: Any, ctx: StageContext, *, start: Any, policy: Any, tokenizer: Any) -> ReferencePlan:
    """The reference of a DPO/KTO stage: its starting model unless `cfg.reference` names another.

    `start` is the starting model as loaded, `policy` the model to train (after `tuning:`).
    - A new adapter on a plain start: the policy with its adapters disabled (TRL's copy of the
      adapter at its initial values is dropped: for a prompt it is not the start).
    - A plain policy: with precompute, the policy before its first step; else a frozen copy, loaded
      here (TRL would reload it from `config._name_or_path`, which for a merged adapter is its base).
    - A start that keeps a learned prompt (an rlft prompt/prefix artifact): TRL's copy of the
      policy's prompt at step 0, with precompute forced on (TRL's fused log-prob head cannot run a
      separate PeftModel as reference, and the copy's base would train along under full tuning).
    - An explicit other reference: a frozen copy (a plain model: adapters merged).
    """
    from peft import PeftModel

    from rlft.errors import ConfigError

    precompute = cfg.precompute_reference
    source, explicit = reference_source(cfg)
    if not explicit:
        if isinstance(start, PeftModel):
            if not precompute:
                ctx.log(
                    "precompute_reference: on, since the starting model keeps a learned prompt: its reference "
                    "log-probs are taken from the policy before the first step"
                )
            return ReferencePlan(
                None, True, False, "the starting model with its kept prompt (before the first step)"
            )
        if isinstance(policy, PeftModel):
            return ReferencePlan(
                None, precompute, True, "the starting model (the policy with its new adapter disabled)"
            )
        if precompute:
            return ReferencePlan(None, True, True, "the starting model (the policy before its first step)")
    ref, description = load_frozen_reference(source, ctx, policy=policy, tokenizer=tokenizer, stage=cfg.name)
    if isinstance(ref, PeftModel):
        raise ConfigError(
            f"stages.{cfg.name}.reference: {description} keeps a learned prompt (prompt/prefix tuning); "
            "TRL cannot run such a model as a separate reference. Start the stage from it instead (then it is "
            "the reference), or export it without the prompt"
        )
    return ReferencePlan(
        ref, precompute, True, description if explicit else "the starting model (a frozen copy)"
    )


def reference_source(cfg: Any) -> tuple[ModelSource, bool]:
    """(where a stage's reference comes from, whether the stage names one other than its start):
    `cfg.reference`, or the stage's starting model `cfg.model`."""
    explicit = cfg.reference is not None and not same_source(cfg.reference, cfg.model)
    return (cfg.reference if explicit else cfg.model), explicit


def load_frozen_reference(
    source: ModelSource, ctx: StageContext, *, policy: Any, tokenizer: Any, stage: str
) -> tuple[Any, str]:
    """(a frozen copy of `source`, what it is): adapters merged, a kept prompt re-attached, in eval mode
    without gradients. Its vocabulary must be the policy's: the reference scores the policy's token ids."""
    from rlft.errors import ConfigError
    from rlft.models.loading import resolve_source

    resolved = resolve_source(
        source, model_paths=ctx.model_paths, run_dir=ctx.run_dir, base_dir=ctx.base_dir, key="reference"
    )
    ref = load_merged_model(resolved, dtype=source.dtype, tokenizer=tokenizer, log=ctx.log, frozen=True)
    policy_vocab = policy.get_input_embeddings().num_embeddings
    if ref.get_input_embeddings().num_embeddings != policy_vocab:
        raise ConfigError(
            f"stages.{stage}.reference: {resolved.description} has a vocabulary of "
            f"{ref.get_input_embeddings().num_embeddings} tokens, the policy {policy_vocab}; the reference must "
            "score the policy's token ids: use a model with the same tokenizer"
        )
    return ref, resolved.description


def reference_cache(cfg: Any, ctx: StageContext, *, tokenizer: Any, trainer: str, args: Any) -> RefLogpsCache:
    """The cache of this stage's reference log-probs (identity: everything but the data)."""
    source = cfg.reference if cfg.reference is not None else cfg.model
    template = tokenizer.chat_template or ""
    identity = {
        "trainer": trainer,
        "reference": source_content_hash(source, ctx),
        "max_length": args.max_length,
        "template": hashlib.sha256(template.encode()).hexdigest(),
        "settings": {
            "truncation_mode": getattr(args, "truncation_mode", None),
            "ld_alpha": getattr(args, "ld_alpha", None),
            "loss_type": args.loss_type
            if trainer == "kto"
            else None,  # KTO's apo_zero_unpaired has no KL pairs
            "bf16": args.bf16,
            "fp16": args.fp16,
        },
    }
    return RefLogpsCache(ctx.cache_dir / "ref_logps", identity=identity, log=ctx.log)


def reference_trainer(
    trainer_class: type,
    cfg: Any,
    ctx: StageContext,
    *,
    reference: ReferencePlan,
    args: Any,
    data: Any,
    policy: Any,
    callbacks: list,
) -> tuple[Any, dict[str, Any]]:
    """A DPO/KTO-style TRL trainer wired to its reference: cached log-probs when precomputed, the
    adapter-disabled policy or a frozen model otherwise. Returns (trainer, reference info for stage.json)."""
    kind = trainer_class.__name__.removesuffix("Trainer").lower()
    cache = (
        reference_cache(cfg, ctx, tokenizer=policy.tokenizer, trainer=kind, args=args)
        if reference.precompute
        else None
    )
    trainer = reference_trainer_class(trainer_class)(
        model=policy.model,
        ref_model=reference.ref_model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=policy.tokenizer,
        callbacks=callbacks,
        ref_cache=cache,
        drop_adapter_copy=reference.drop_adapter_copy,
    )
    if cache is not None and trainer.ref_model is not None:
        trainer.ref_model = None  # its log-probs are in the data now: free it, as TRL does for its own copy
    return trainer, {"model": reference.description, "cache": cache.events if cache is not None else None}
