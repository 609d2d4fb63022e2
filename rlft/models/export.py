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

rlft's own records (stage.json, metrics.jsonl, stage.log, data reports) are left out. The
folder is assembled aside and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rlft.errors import ConfigError
from rlft.models.tuning import ADAPTER_DIR, kept_adapter

RECORDS = {
    "stage.json",
    "metrics.jsonl",
    "stage.log",
    "data_report.json",
    "data_lengths.png",
    "rejects.jsonl",
}
# peft task type -> the transformers class that loads the exported model
AUTO_CLASSES = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
}


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

    def write(tmp: Path) -> None:
        for item in source.iterdir():
            if item.name in RECORDS or (item.name == ADAPTER_DIR and merge):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        if kept is not None:  # the copied prompt's base is the exported folder, not the run folder
            config_path = tmp / ADAPTER_DIR / "adapter_config.json"
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = str(out.resolve())
            config_path.write_text(json.dumps(config, indent=2) + "\n")

    _write_atomic(out, write)
    if kept is not None:
        return f"wrote {out}: base model + PEFT prompt; load with peft.AutoPeftModelForCausalLM.from_pretrained('{out / ADAPTER_DIR}')"
    what = "adapters merged" if (source / ADAPTER_DIR).is_dir() else "a plain model"
    return f"wrote {out} ({what}); load it with transformers.{auto_class}.from_pretrained('{out}')"


def _merge_adapter(adapter: Path, out: Path) -> str:
    """Load a PEFT adapter's base model, put the adapter on it, merge, and save model + tokenizer."""
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
    auto_class = AUTO_CLASSES.get(
        getattr(config.task_type, "value", config.task_type), "AutoModelForCausalLM"
    )
    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(base, dtype="auto")
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            adapter if (adapter / "tokenizer_config.json").is_file() else base
        )
    except OSError as e:
        raise ConfigError(f"{adapter}: cannot load its base model {base}: {e}") from None
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    _write_atomic(out, write)
    return f"wrote {out} (adapter merged into {base}); load it with transformers.{auto_class}.from_pretrained('{out}')"


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
