"""`rlft export`: a stage's model as a folder that needs neither rlft nor its run folder.

    rlft export runs/quickstart/sft --merge --out models/sft

What it writes, by what the source holds (see rlft.models.tuning for the artifact layouts):

    source                                  --merge                           without --merge
    stage folder, merged or plain model     the root model + tokenizer        same, plus adapter/ when there is one
    (full, freeze, lora, dora, adapter)
    stage folder, prompt/prefix tuning      refused: nothing to merge into    base + tokenizer + adapter/ (a PEFT
                                                                              folder whose base is the export)
    a PEFT adapter folder                   base + adapter, merged            refused: it is already portable
    (adapter_config.json, no config.json)

Only what a deployed model needs is copied, by an allow-list (`MODEL_FILES`, `MODEL_PATTERNS`):
weights (safetensors), config, generation config, tokenizer files with the chat template, a
reward model's reward_stats.json, the model's own code when config.json maps to it (auto_map),
and adapter/ where the table says so. Everything else in a stage folder is a record of the run:
stage.json, metrics.jsonl, stage.log, data reports, rejects, wandb/, tensorboard/, ranks/,
samples, and whatever records later stages add; the log names what was left out. An allow-list,
not a list of records: a record a new stage kind adds is left out without anyone remembering to
list it, and a W&B offline run (the resolved config, the machine's details) never ships by accident.

Added to every export: a model card (README.md, see rlft.models.model_card) and, for a causal
LM, generation_config.json (the model's own, with eos/pad ids filled in from the tokenizer where
it has none; else one made from the tokenizer's eos/pad ids).

A merged LoRA/DoRA/(IA)^3 model is checked before anything is written (rlft.models.merge_check):
its logits must equal base + adapter (unmerged) on a few fixed inputs, and differ from the base
model's when the adapter is not zero; a merge that reproduces the base is refused. For a stage
folder (whose root is merged already) the base is the one adapter/adapter_config.json names; when
it is not at hand (a folder gone, a Hub model not in the local cache, a base re-run since) the
check is skipped and the log and the card say why. The folder is assembled aside and renamed
into place, so it is complete or absent.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlft.artifacts import read_json
from rlft.errors import ConfigError
from rlft.models.merge_check import (
    MergeVerdict,
    adapter_base,
    base_change,
    check_ids,
    check_vocab,
    logits,
    merge_verdict,
    rtol_for,
)
from rlft.models.model_card import model_card, stage_lineage
from rlft.models.tuning import ADAPTER_DIR, kept_adapter

logger = logging.getLogger(__name__)

# What a model folder needs: what transformers' save_pretrained writes for a model and its tokenizer.
MODEL_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "reward_stats.json",  # a reward model's score statistics: RewardModel(normalize=True) reads them
}
MODEL_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "*.tiktoken")
MODEL_DIRS = {"additional_chat_templates"}  # named chat templates besides the default one
CARD = "README.md"  # written here; a source's own README.md is replaced
# peft task type -> the transformers class that loads the exported model
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
}
TASKS = {name: task for task, name in AUTO_CLASSES.items()}


def export_model(source: str | Path, out: str | Path, *, merge: bool) -> str:
    """Write `source`'s model to `out`; returns one line saying what was written and how to load it."""
    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: exists and is not empty; choose another folder or remove it")
    if (source / "config.json").is_file():
        return _export_stage(source, out, merge=merge)
    if (source / "adapter_config.json").is_file():
        if not merge:
            raise ConfigError(
                f"{source} is a PEFT adapter folder, already portable; add --merge to fold it into its base model"
            )
        return _merge_adapter(source, out)
    raise ConfigError(
        f"{source}: neither a model folder (config.json) nor a PEFT adapter folder (adapter_config.json); "
        "give a stage folder such as runs/<pipeline>/<stage>"
    )


def model_files(source: Path, *, with_adapter: bool) -> tuple[list[str], list[str]]:
    """(names in `source` a model folder needs, names left out), each sorted. adapter/ goes with
    `with_adapter`; the model's own Python files when config.json has an auto_map (remote code)."""
    config = read_json(source / "config.json") or {}
    keep, leave = [], []
    for item in sorted(source.iterdir(), key=lambda p: p.name):
        name = item.name
        if item.is_dir():
            needed = name in MODEL_DIRS or (name == ADAPTER_DIR and with_adapter)
        else:
            needed = (
                name in MODEL_FILES
                or any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_PATTERNS)
                or (name.endswith(".py") and bool(config.get("auto_map")))
            )
        (keep if needed else leave).append(name + ("/" if item.is_dir() else ""))
    return keep, leave


def _export_stage(source: Path, out: Path, *, merge: bool) -> str:
    kept = kept_adapter(source)
    if kept is not None and merge:
        peft_type = json.loads((kept / "adapter_config.json").read_text())["peft_type"].lower()
        raise ConfigError(
            f"{source} was trained with {peft_type}: its learned virtual tokens are extra inputs in front of every "
            "sequence, not a change of weights, so they cannot be merged into a plain model. Export without --merge "
            "to get the base model and the PEFT prompt, and load them with "
            "peft.AutoPeftModelForCausalLM.from_pretrained(OUT/adapter) (or start a stage from it: rlft re-attaches it)"
        )
    auto_class = _auto_class(json.loads((source / "config.json").read_text()))
    task = TASKS.get(auto_class, "CAUSAL_LM")
    keep, left_out = model_files(source, with_adapter=not merge)
    if not any(fnmatch.fnmatch(name, "*.safetensors") for name in keep):
        raise ConfigError(
            f"{source}: no weights in safetensors format (*.safetensors); rlft exports safetensors only "
            "(load the model and save_pretrained it to convert)"
        )
    merged_adapter = kept is None and (source / ADAPTER_DIR / "adapter_config.json").is_file()
    checks = [_check_stage_merge(source, auto_class)] if merged_adapter else []
    tokenizer = _tokenizer(source)
    chain = stage_lineage(source)

    def write(tmp: Path) -> None:
        for name in keep:
            item = source / name.rstrip("/")
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if kept is not None:  # the copied prompt's base is the exported folder, not the run folder
            config_path = tmp / ADAPTER_DIR / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = str(out.resolve())
            config_path.write_text(json.dumps(config, indent=2) + "\n")
        if task == "CAUSAL_LM":
            _write_generation_config(source, tmp, tokenizer)
        load = _load_snippet(auto_class, prompt=kept is not None)
        card = model_card(
            chain,
            name=_card_name(source, chain),
            task=task,
            load=load,
            checks=checks,
            method=_peft_method(source),
        )
        (tmp / CARD).write_text(card)

    _write_atomic(out, write)
    if left_out:
        logger.info(f"left out of {out} (records of the run, not part of the model): {', '.join(left_out)}")
    if kept is not None:
        return (
            f"wrote {out}: base model + PEFT prompt, model card {CARD}; load with "
            f"peft.AutoPeftModelForCausalLM.from_pretrained('{out / ADAPTER_DIR}')"
        )
    what = "adapters merged" if (source / ADAPTER_DIR).is_dir() else "a plain model"
    return f"wrote {out} ({what}, model card {CARD}); load it with transformers.{auto_class}.from_pretrained('{out}')"


def _check_stage_merge(source: Path, auto_class: str) -> str:
    """The merge check of a stage folder whose root holds base + adapter/ merged: a line for the log
    and the card (passed, or skipped and why); raises ConfigError when the root is not that merge."""
    import transformers
    from peft import PeftModel

    adapter = source / ADAPTER_DIR
    base = adapter_base(adapter)
    if base is None:
        return _skipped(f"{adapter}/adapter_config.json names no base model (base_model_name_or_path)")
    if Path(base).is_dir():
        recorded = ((read_json(source / "stage.json") or {}).get("inputs") or {}).get("model")
        reason = base_change(recorded, Path(base))
        if reason is not None:
            return _skipped(reason)
    elif not _hub_id(base):
        return _skipped(f"the adapter's base model {base} is not at hand (no such folder)")
    cls = getattr(transformers, auto_class)
    merged = cls.from_pretrained(source, dtype="auto")
    try:
        base_model = cls.from_pretrained(base, dtype="auto", local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return _skipped(
            f"the adapter's base model {base} cannot be loaded here ({first}); a Hub model must be in the local "
            f"cache (hf download {base}) for the check to run"
        )
    if auto_class == "AutoModelForSequenceClassification":
        base_model.config.pad_token_id = merged.config.pad_token_id  # both pool at the last non-pad token
    rows = check_ids(check_vocab(merged), avoid=merged.config.pad_token_id)
    base_logits, merged_logits = logits(base_model, rows), logits(merged, rows)
    adapted_logits = logits(PeftModel.from_pretrained(base_model, adapter), rows)
    verdict = merge_verdict(merged_logits, adapted_logits, base_logits, rtol=rtol_for(merged))
    return _act_on(
        verdict,
        where=f"{source}: its root model against {base} + {adapter}",
        fix=f"re-run the stage (rlft run PIPELINE --only {source.name} --force), or merge its adapter afresh: "
        f"rlft export {adapter} --merge --out DIR",
    )


def _act_on(verdict: MergeVerdict, *, where: str, fix: str) -> str:
    """Refuse a failed merge check (ConfigError: nothing is written); log and return a passed one's line."""
    line = verdict.describe()
    if verdict.outcome in ("base_reproduced", "mismatch"):
        raise ConfigError(f"{where}: {line}. Nothing was written; {fix}")
    (logger.warning if verdict.outcome == "zero_adapter" else logger.info)(line)
    return line


def _skipped(reason: str) -> str:
    line = f"merge check skipped: {reason}"
    logger.warning(line)
    return line


def _merge_adapter(adapter: Path, out: Path) -> str:
    """Load a PEFT adapter's base model, put the adapter on it, merge, check, and save model + tokenizer."""
    import transformers
    from peft import PeftConfig, PeftModel

    config = PeftConfig.from_pretrained(adapter)
    if config.is_prompt_learning:
        raise ConfigError(
            f"{adapter} holds a {config.peft_type.value.lower()} prompt: virtual tokens cannot be merged into weights"
        )
    base = config.base_model_name_or_path
    if not base:
        raise ConfigError(f"{adapter}/adapter_config.json names no base_model_name_or_path to merge into")
    task = getattr(config.task_type, "value", config.task_type)
    auto_class = AUTO_CLASSES.get(task, "AutoModelForCausalLM")
    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(base, dtype="auto")
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            adapter if (adapter / "tokenizer_config.json").is_file() else base
        )
    except OSError as e:
        raise ConfigError(f"{adapter}: cannot load its base model {base}: {e}") from None
    rows = check_ids(check_vocab(model), avoid=model.config.pad_token_id if task == "SEQ_CLS" else None)
    base_logits = logits(model, rows)
    adapted = PeftModel.from_pretrained(model, adapter)
    adapted_logits = logits(adapted, rows)
    merged = adapted.merge_and_unload()
    verdict = merge_verdict(logits(merged, rows), adapted_logits, base_logits, rtol=rtol_for(merged))
    check = _act_on(
        verdict,
        where=f"{adapter} merged into {base}",
        fix="the PEFT folder itself is portable: load it with peft (AutoPeftModel...from_pretrained) instead",
    )
    stage_dir = adapter.parent if adapter.name == ADAPTER_DIR else None
    chain = stage_lineage(stage_dir) if stage_dir is not None else []

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if task == "CAUSAL_LM":
            _write_generation_config(tmp, tmp, tokenizer)
        card = model_card(
            chain,
            name=_card_name(stage_dir, chain) if chain else adapter.name,
            task=task if task in ("CAUSAL_LM", "SEQ_CLS") else "CAUSAL_LM",
            load=_load_snippet(auto_class, prompt=False),
            checks=[check],
            base_model=base if _hub_id(base) else None,
            method=config.peft_type.value.lower(),
        )
        (tmp / CARD).write_text(card)

    _write_atomic(out, write)
    return (
        f"wrote {out} (adapter merged into {base}, model card {CARD}); "
        f"load it with transformers.{auto_class}.from_pretrained('{out}')"
    )


def _peft_method(source: Path) -> str | None:
    """The peft method of a stage folder's adapter/ (lora, dora, ia3, prompt_tuning, ...), for a card
    whose stage.json does not say; None without one."""
    config = read_json(source / ADAPTER_DIR / "adapter_config.json")
    if not config or not config.get("peft_type"):
        return None
    return "dora" if config.get("use_dora") else str(config["peft_type"]).lower()


def _write_generation_config(source: Path, tmp: Path, tokenizer: Any) -> None:
    """generation_config.json in `tmp`: `source`'s own, with eos/pad ids it lacks taken from the
    tokenizer; else one made of the tokenizer's eos and pad ids (pad: eos when it has none)."""
    from transformers import GenerationConfig

    own = (source / "generation_config.json").is_file()
    config = GenerationConfig.from_pretrained(source) if own else GenerationConfig()
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    filled = []
    if config.eos_token_id is None and eos is not None:
        config.eos_token_id = eos
        filled.append(f"eos {eos}")
    if config.pad_token_id is None and (pad if pad is not None else eos) is not None:
        config.pad_token_id = pad if pad is not None else eos
        filled.append(f"pad {config.pad_token_id}")
    config.save_pretrained(tmp)
    what = "the model's own" if own else "made from the tokenizer"
    logger.info(
        f"generation_config.json: {what}" + (f" (filled in: {', '.join(filled)})" if filled and own else "")
    )


def _tokenizer(source: Path) -> Any:
    """The folder's tokenizer, or None when it has none (the export then has none either)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        logger.warning(
            f"{source}: no tokenizer could be loaded; generation_config.json gets no eos/pad ids from it"
        )
        return None


def _load_snippet(auto_class: str, *, prompt: bool) -> str:
    """Python that loads the export, for its model card."""
    path = 'path = "<this folder, or its Hub id>"'
    reward = auto_class == "AutoModelForSequenceClassification"
    if prompt:
        peft_class = "AutoPeftModelForSequenceClassification" if reward else "AutoPeftModelForCausalLM"
        fixed = (
            "reward_models.RewardModel.from_pretrained(path) scores with it right"
            if reward
            else "rlft.models.loading.load_causal_lm (or `rlft generate PATH --prompt ...`) fixes it"
        )
        return "\n".join(
            [
                f"from peft import {peft_class}  # base model at the root, learned prompt in adapter/",
                path,
                f'model = {peft_class}.from_pretrained(path + "/adapter")',
                "# peft 0.21's forward and generate are wrong for prompt learning under transformers 5;",
                f"# with rlft installed, {fixed}",
            ]
        )
    lines = [f"from transformers import AutoTokenizer, {auto_class}", path]
    lines += [
        f"model = {auto_class}.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
    ]
    if reward:
        lines += [
            "# with rlft installed, scores (prompt, completion) text through the chat template:",
            "# reward_models.RewardModel.from_pretrained(path, normalize=True).score(prompts, completions)",
        ]
    return "\n".join(lines)


def _card_name(source: Path | None, chain: list[dict[str, Any]]) -> str:
    """`<pipeline>/<stage>` for a stage in a run folder (the pipeline's name from its pipeline.yaml), else the folder's name."""
    if source is None:
        return "model"
    if not chain:
        return source.resolve().name
    pipeline = _pipeline_name(source.resolve().parent)
    return f"{pipeline}/{chain[-1].get('stage', source.name)}" if pipeline else source.resolve().name


def _pipeline_name(run_dir: Path) -> str | None:
    import yaml

    from rlft import yamlio

    try:
        name = (yamlio.safe_load((run_dir / "pipeline.yaml").read_text()) or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return str(name) if name else None


def _hub_id(name: str) -> bool:
    """Whether `name` reads as a Hub model id (`org/name` or `name`), not as a local path."""
    if name.startswith((".", "/", "~")) or Path(name).exists():
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) is not None


def _auto_class(config: dict[str, Any]) -> str:
    architecture = (config.get("architectures") or ["ForCausalLM"])[0]
    for task, name in AUTO_CLASSES.items():
        if architecture.endswith(name.removeprefix("AutoModel")):
            return AUTO_CLASSES[task]
    return "AutoModel"


def _write_atomic(out: Path, write) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        if out.exists():  # empty (checked above): os.replace cannot rename over a folder
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
