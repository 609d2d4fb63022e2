"""The trainer config dataclasses rlft passes `trainer:` through to: their fields (read without
importing them) and rlft's own defaults for them.

`rlft validate` checks each stage's ``trainer:`` keys against the fields of the config class it
passes through to (``SFTConfig``, ``DPOConfig``, ...). Importing trl costs ~5-12 s on a small
CPU box, so the names are read from the classes' source with ``ast`` instead, following base
classes through ``from X import Name``. If that ever fails (a refactor upstream), we fall back
to importing the class; ``tests/test_trainer_fields.py`` pins both ways to the same answer.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

# rlft's defaults for every TRL trainer config, applied unless the stage's `trainer:` sets the key
# (the order in which every source of a setting is merged: rlft.stages.base.TrainedStage.trainer_settings).
TRAINER_DEFAULTS: dict[str, Any] = {
    "activation_checkpointing": False,  # TRL turns it on; on small models it only costs time (ENVIRONMENT.md)
    "logging_steps": 5,  # log often: runs are short, curves are what users look at
    "save_strategy": "steps",  # checkpoints make a stage that died resumable
    "save_steps": 100,
    "save_total_limit": 2,  # keep the last two checkpoints
    "report_to": "none",  # rlft opens the W&B run itself (grouped by pipeline), see rlft/tracking.py
    "per_device_train_batch_size": 8,
    "num_train_epochs": 1,
    "dataloader_num_workers": 0,
    "eval_steps": 50,
}
# Keys rlft sets itself; a stage may not set them in `trainer:`.
OWNED = {"output_dir": "the stage folder is runs/<pipeline>/<stage> (change it with --run-dir)"}

# Re-exports that `from PACKAGE import Name` hides behind lazy __init__ files.
_REEXPORTS = {("transformers", "TrainingArguments"): "transformers.training_args"}


def check_trainer_keys(class_path: str, keys: dict) -> str | None:
    """None when every key is a field of `class_path` ("module:Class"), else `key: message`."""
    fields = config_fields(class_path)
    for key in keys:
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            return f"{key}: unknown key for {class_path.split(':')[1]}{hint}"
    return None


@cache
def config_fields(class_path: str) -> frozenset[str]:
    module, name = class_path.split(":")
    try:
        fields = _ast_fields(module, name)
        if fields:
            return frozenset(fields)
    except (OSError, SyntaxError, ValueError, AttributeError):
        pass
    return frozenset(imported_fields(class_path))


def imported_fields(class_path: str) -> set[str]:
    """The slow, certain way: import the class and read its dataclass fields."""
    import dataclasses
    import importlib

    module, name = class_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _ast_fields(module: str, name: str, depth: int = 0) -> set[str]:
    if depth > 8:
        raise ValueError("base class chain too deep")
    tree = ast.parse(_module_file(module).read_text())
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        raise ValueError(f"{name} not defined in {module}")
    fields = {
        n.target.id
        for n in cls.body
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and "ClassVar" not in ast.unparse(n.annotation)
    }
    for base in cls.bases:
        if not isinstance(base, ast.Name):
            continue
        fields |= _ast_fields(_import_source(tree, module, base.id), base.id, depth + 1)
    return fields


MISSING = object()  # a field default that is not a literal (a factory, a computed value), or no such field


def field_default(class_path: str, key: str) -> Any:
    """The default of field `key` of `class_path` ("module:Class"), read from its source as
    `key: T = value` or `key: T = field(default=value)`; MISSING when it is not a literal.
    Defaults that `__post_init__` changes afterwards are not seen (TRL's `bf16`): ask only for
    plain values (learning rate, batch size, Adam settings)."""
    module, name = class_path.split(":")
    try:
        return _ast_default(module, name, key)[1]
    except (OSError, SyntaxError, ValueError, AttributeError):
        return MISSING


def _ast_default(module: str, name: str, key: str, depth: int = 0) -> tuple[bool, Any]:
    """(whether `name` or a base class declares `key`, its literal default or MISSING)."""
    if depth > 8:
        raise ValueError("base class chain too deep")
    tree = _parsed(module)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        raise ValueError(f"{name} not defined in {module}")
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == key:
            value = n.value
            if isinstance(value, ast.Call) and ast.unparse(value.func).split(".")[-1] == "field":
                value = next((k.value for k in value.keywords if k.arg == "default"), None)
            try:
                return True, ast.literal_eval(value) if value is not None else MISSING
            except (ValueError, TypeError, SyntaxError):
                return True, MISSING
    for base in cls.bases:
        if isinstance(base, ast.Name):
            found, value = _ast_default(_import_source(tree, module, base.id), base.id, key, depth + 1)
            if found:
                return found, value
    return False, MISSING


@cache
def _parsed(module: str) -> ast.Module:
    return ast.parse(_module_file(module).read_text())


def _module_file(module: str) -> Path:
    """The source file of a module, found without importing it (find_spec("a.b") would import a)."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"package {top} not found")
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise ValueError(f"module {module} not found")


def _import_source(tree: ast.Module, module: str, name: str) -> str:
    """The module a base class name comes from (same module, or a `from X import name`)."""
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module
        if isinstance(node, ast.ImportFrom) and any(a.name == name and a.asname is None for a in node.names):
            if node.level:
                package = module.rsplit(".", node.level)[0]
                source = f"{package}.{node.module}" if node.module else package
            else:
                source = node.module or ""
            return _REEXPORTS.get((source, name), source)
    raise ValueError(f"cannot find where {name} comes from in {module}")
