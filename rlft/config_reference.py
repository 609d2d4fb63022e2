"""The config reference, read from the config models: every key, its type, default and description.

`rlft config show [KIND]` prints it (a stage kind, or `pipeline` for a file's top level) and
`rlft config schema` writes the JSON Schema of a pipeline file, which YAML editors use to check
and complete pipeline files (configs/rlft.schema.json ships it). Both come from the pydantic
models and their `Field(description=...)` (DESIGN.md decision 15); nothing here restates a key.

Nested models are flattened with dots (`data.curate.dedup`). A tagged union (`tuning`, tagged by
`method`) lists each member's keys, marked with the tag values that select it. A model met again
in the same reference (`reference` after `model`, `data.eval` after `data.train`) is not expanded
twice: its row names the key whose rows it shares.

Light: pydantic, yaml and rich; the stage modules it loads import no torch or trl at the top.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from rlft.config import PipelineConfig
from rlft.errors import ConfigError
from rlft.stages import STAGES, stage_config_class

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class FieldDoc:
    """One key of a config, as the reference shows it."""

    key: str  # dotted, as written in YAML: data.curate.dedup
    type: str  # e.g. `int | None`, `auto | online | offline`, `list[str]`, `ModelSource`
    default: str  # as YAML writes it (null, true, [sigmoid], {method: full}); `required` if none
    description: str
    when: str = ""  # a tagged union's member: the tag that selects it, e.g. `method: lora | dora`
    same_as: str = ""  # a model already expanded under this key (its keys are listed there)


def reference_names() -> list[str]:
    """What `rlft config show` takes: every stage kind, and `pipeline` for a file's top level."""
    return [*STAGES, "pipeline"]


def config_class(name: str) -> type[BaseModel]:
    """The config model of a stage kind, or PipelineConfig for `pipeline`."""
    if name == "pipeline":
        return PipelineConfig
    cls = stage_config_class(name)
    if cls is None:
        close = difflib.get_close_matches(name, reference_names(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(
            f"unknown kind '{name}'{hint} (kinds: {', '.join(STAGES)}; or pipeline for a file's top level)"
        )
    return cls


def trainer_config_class(cls: type[BaseModel]) -> str | None:
    """`module:Class` of the TRL config dataclass that a stage's `trainer:` passes through to."""
    return getattr(cls, "trainer_config_class", None)


def summary(cls: type[BaseModel]) -> str:
    """The first line of a config model's docstring."""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


# ---------------------------------------------------------------------------------------------
# Walking a model
# ---------------------------------------------------------------------------------------------


def field_docs(
    model: type[BaseModel],
    *,
    nested: bool = True,
    prefix: str = "",
    when: str = "",
    seen: dict[type[BaseModel], str] | None = None,
) -> list[FieldDoc]:
    """Every key of `model`, in declaration order; with `nested`, the keys of nested models after
    the key that holds them (dotted). `seen` (model -> key) keeps a model from being expanded twice."""
    seen = {} if seen is None else seen
    docs: list[FieldDoc] = []
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        inner = inner_models(info.annotation) if nested else []
        shared = next((seen[m] for m in inner if m in seen), "")
        docs.append(
            FieldDoc(
                key=key,
                type=type_name(info.annotation),
                default=default_text(info),
                description=info.description or "",
                when=when,
                same_as=shared,
            )
        )
        if shared:
            continue
        for member in inner:
            seen[member] = key
        tag = info.discriminator if isinstance(info.discriminator, str) else None
        for member in inner:
            selected = when
            if tag and len(inner) > 1:
                values = typing.get_args(member.model_fields[tag].annotation)
                selected = f"{tag}: {' | '.join(map(str, values))}"
            docs += field_docs(member, prefix=f"{key}.", when=selected, seen=seen)
    return docs


def inner_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's type (through unions, lists, dicts, Annotated), in order."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += [m for m in inner_models(arg) if m not in found]
    return found


def type_name(annotation: Any) -> str:
    """A field's type as the reference shows it: Python's notation, a Literal as its values."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return getattr(annotation, "__name__", str(annotation))


def default_text(info: FieldInfo) -> str:
    """A field's default as YAML writes it; a model default as the keys that differ from its own
    defaults (`{}`: all defaults), keeping a tagged union's tag (`{method: full}`)."""
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        dumped = value.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        tag = info.discriminator if isinstance(info.discriminator, str) else None
        value = {tag: getattr(value, tag), **dumped} if tag else dumped
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


# ---------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------


def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline file: PipelineConfig's, with each item of
    `stages` one of the kinds' schemas (each its config class's `model_json_schema()`), chosen by
    `kind`. The kinds' schemas and the models they use go into one `$defs`."""
    schema = PipelineConfig.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})
    mapping: dict[str, str] = {}
    for kind in STAGES:
        cls = stage_config_class(kind)
        stage = cls.model_json_schema()
        for name, definition in stage.pop("$defs", {}).items():
            if defs.setdefault(name, definition) != definition:
                raise ValueError(f"two config models named {name} differ; rename one")
        # In a file `kind` is what picks the schema: required there, though the class defaults it.
        stage["required"] = ["kind", *[k for k in stage.get("required", []) if k != "kind"]]
        defs[cls.__name__] = stage
        mapping[kind] = f"#/$defs/{cls.__name__}"
    stages = schema["properties"]["stages"]
    schema["properties"]["stages"] = {
        "description": stages["description"],
        "minItems": stages["minItems"],
        "type": "array",
        "items": {
            "oneOf": [{"$ref": ref} for ref in mapping.values()],
            "discriminator": {"propertyName": "kind", "mapping": mapping},
        },
    }
    del schema["title"]
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "rlft pipeline file",
        **schema,
        "description": f"{schema['description']} Every key: `rlft config show [KIND]`.",
        "$defs": dict(sorted(defs.items())),
    }


def pipeline_schema_text() -> str:
    """The schema as `rlft config schema` writes it (and configs/rlft.schema.json holds it)."""
    return json.dumps(pipeline_schema(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Rendering (rich)
# ---------------------------------------------------------------------------------------------


def fields_table(docs: list[FieldDoc]) -> Any:
    """The rows of `field_docs` as a rich table; a tagged union's members are sections, each opened
    by its tag's row (`tuning.method`, type `lora | dora`)."""
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("key", style="bold", overflow="fold")
    table.add_column("type", max_width=28)
    table.add_column("default", max_width=20, overflow="fold")
    table.add_column("description", ratio=1)
    for i, d in enumerate(docs):
        if i and d.when != docs[i - 1].when:
            table.add_section()
        description = d.description + (f" (keys: as {d.same_as})" if d.same_as else "")
        table.add_row(Text(d.key), Text(d.type), Text(d.default), Text(description))
    return table


def kinds_table() -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table()
    for col in ("kind", "config class", "trainer: passes to", "what it does"):
        table.add_column(col)
    for kind in STAGES:
        cls = stage_config_class(kind)
        trainer = trainer_config_class(cls)
        table.add_row(
            Text(kind, style="bold"),
            Text(cls.__name__),
            Text(short_class_name(trainer) if trainer else "-"),
            Text(summary(cls)),
        )
    return table


def short_class_name(path: str) -> str:
    """`trl.trainer.dpo_config:DPOConfig` -> `trl.DPOConfig`, as the class is imported."""
    module, _, name = path.partition(":")
    return f"{module.partition('.')[0]}.{name}"


def show(name: str | None, *, console: Any) -> None:
    """Print the reference: a pipeline file's top-level keys and the kinds (no name), or every key
    of a stage kind or of the pipeline (`pipeline`), nested models flattened."""
    from rich.text import Text

    if name is None:
        console.print(Text("pipeline file: top-level keys (every nested key: rlft config show pipeline)"))
        console.print(fields_table(field_docs(PipelineConfig, nested=False)))
        console.print(Text("stage kinds (every key of one: rlft config show KIND)"))
        console.print(kinds_table())
        return
    cls = config_class(name)
    if name == "pipeline":
        title = "pipeline file (rlft.config:PipelineConfig)"
        note = "stages: each item's keys are its kind's: rlft config show KIND"
    else:
        title = f"kind: {name} ({cls.__module__}:{cls.__name__}): {summary(cls)}"
        trainer = trainer_config_class(cls)
        note = (
            f"trainer: passes through to {short_class_name(trainer)} ({trainer}): any of its fields, checked "
            "when the pipeline loads; rlft's defaults for them are in rlft/trainer_fields.py"
            if trainer
            else "no trainer: section: the keys above are all the stage takes"
        )
    console.print(Text(title))
    console.print(fields_table(field_docs(cls)))
    console.print(Text(note))
