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
    """None when every key is a field of `class_path` ("module:Class") and every value fits the
    field's type (and RANGES), else `key: message`."""
    fields = config_fields(class_path)
    for key in keys:
        if key in OWNED:
            return f"{key}: rlft sets this itself: {OWNED[key]}"
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            return f"{key}: unknown key for {class_path.split(':')[1]}{hint}"
    for key, value in keys.items():
        problem = check_trainer_value(class_path, key, value)
        if problem:
            return f"{key}: {problem}"
    return None


# Ranges of common numeric fields (HF/TRL check few of them, and only when the trainer starts).
# max_steps: -1 (the default) means "train for num_train_epochs"; 0 would too, confusingly.
RANGES: dict[str, tuple[str, Any, str]] = {
    "learning_rate": (">", 0, "a positive number, e.g. 3e-4"),
    "max_steps": ("steps", None, "a positive number of steps, or -1 to train for num_train_epochs"),
    "num_train_epochs": (">", 0, "a positive number of epochs"),
    "per_device_train_batch_size": (">=", 1, "at least 1"),
    "per_device_eval_batch_size": (">=", 1, "at least 1"),
    "gradient_accumulation_steps": (">=", 1, "at least 1"),
    "warmup_ratio": ("in", (0, 1), "between 0 and 1"),
    "weight_decay": (">=", 0, "0 or more"),
    "max_grad_norm": (">=", 0, "0 or more"),
    "logging_steps": (">", 0, "a positive number"),
    "save_steps": (">", 0, "a positive number"),
    "eval_steps": (">", 0, "a positive number"),
    "save_total_limit": (">=", 1, "at least 1"),
    "seed": (">=", 0, "0 or more"),
    "max_length": (">=", 1, "at least 1"),
}
_KINDS = {"float": "a number", "int": "an integer", "bool": "true or false", "str": "text"}
_KINDS |= {"list": "a list", "dict": "a mapping", "none": "null"}


def check_trainer_value(class_path: str, key: str, value: Any) -> str | None:
    """None when `value` fits field `key` of `class_path` (its annotation, read from the source, and
    RANGES), else what is wrong. A type rlft cannot read (an enum, Any) accepts any value."""
    kinds = field_kinds(class_path, key)
    if kinds is not None and not _fits(value, kinds):
        wanted = " or ".join(dict.fromkeys(_KINDS[k] for k in sorted(kinds) if k in _KINDS))
        got = f"the text {value!r}" if isinstance(value, str) else repr(value)
        hint = " (write numbers without quotes)" if kinds & {"float", "int"} and _is_number(value) else ""
        return f"must be {wanted}, got {got}{hint}"
    rule = RANGES.get(key)
    if rule is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    op, bound, says = rule
    ok = {
        ">": lambda: value > bound,
        ">=": lambda: value >= bound,
        "in": lambda: bound[0] <= value <= bound[1],
        "steps": lambda: value == -1 or value > 0,
    }[op]()
    return None if ok else f"must be {says}, got {value!r}"


def _is_number(value: Any) -> bool:
    try:
        return isinstance(value, str) and float(value) == float(value)
    except ValueError:
        return False


def _fits(value: Any, kinds: frozenset[str]) -> bool:
    if value is None:
        return "none" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool(kinds & {"int", "float"})
    if isinstance(value, float):
        return "float" in kinds or ("int" in kinds and value.is_integer())
    kind = {str: "str", list: "list", dict: "dict"}.get(type(value))
    return kind in kinds if kind else False


@cache
def field_kinds(class_path: str, key: str) -> frozenset[str] | None:
    """The plain kinds field `key` accepts ({"float"}, {"int", "none"}, ...), from its annotation;
    None when some part of it is not a plain type (an enum, Any, a class): then anything goes."""
    module, name = class_path.split(":")
    try:
        annotation = _ast_field(module, name, key)
    except (OSError, SyntaxError, ValueError, AttributeError):
        return None
    return _annotation_kinds(annotation) if annotation is not None else None


def _annotation_kinds(node: ast.expr) -> frozenset[str] | None:
    plain = {"float": "float", "int": "int", "bool": "bool", "str": "str", "list": "list", "dict": "dict"}
    plain |= {"List": "list", "Dict": "dict"}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        return _annotation_kinds(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Constant) and node.value is None:
        return frozenset({"none"})
    if isinstance(node, ast.Name):
        return frozenset({plain[node.id]}) if node.id in plain else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left, right = _annotation_kinds(node.left), _annotation_kinds(node.right)
        return None if left is None or right is None else left | right
    if isinstance(node, ast.Subscript):
        outer = ast.unparse(node.value).split(".")[-1]
        if outer in plain:
            return frozenset({plain[outer]})
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if outer in ("Optional", "Union"):
            parts = [_annotation_kinds(a) for a in args]
            if any(p is None for p in parts):
                return None
            return frozenset().union(*parts) | ({"none"} if outer == "Optional" else set())
    return None


def _ast_field(module: str, name: str, key: str, depth: int = 0) -> ast.expr | None:
    """The annotation of field `key` of class `name` (or a base class), or None."""
    if depth > 8:
        raise ValueError("base class chain too deep")
    tree = _parsed(module)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if cls is None:
        raise ValueError(f"{name} not defined in {module}")
    for n in cls.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == key:
            return n.annotation
    for base in cls.bases:
        if isinstance(base, ast.Name):
            found = _ast_field(_import_source(tree, module, base.id), base.id, key, depth + 1)
            if found is not None:
                return found
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
