"""Pipeline config: YAML -> typed, strict pydantic models.

A pipeline file has a ``name``, defaults shared by its stages (``model``, ``launch``,
``tracking``, ``seed``), an optional ``evaluate`` block (the verifiable task reward measured
after each stage) and a list of ``stages``, each with a ``kind`` and a unique ``name``.
Every model forbids unknown keys; errors name the key path and suggest the closest valid key:

    stages[1].trainer.learning_rte: unknown key; did you mean learning_rate?

Relative paths in a pipeline file resolve against the folder of that file.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlft.errors import ConfigError
from rlft.models.tiny import TinySpec


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


# ---------------------------------------------------------------------------------------------
# Model sources
# ---------------------------------------------------------------------------------------------


class ModelSource(Strict):
    """Where a stage's model comes from: exactly one of ``from``, ``path``, ``hub``, ``package``, ``tiny``.

    A plain string is shorthand: an existing local folder (relative to the pipeline file) is a
    ``path``, anything else a ``hub`` name.
    """

    from_: str | None = Field(default=None, alias="from")  # an earlier stage's artifact, by stage name
    path: str | None = None  # a local Hugging Face folder (or the folder holding gguf_file)
    hub: str | None = None  # a hub model name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct
    package: str | None = None  # an installed Python package that ships the weights (found, not imported)
    tiny: TinySpec | None = None  # build a tiny Llama + BPE tokenizer here (see rlft.models.tiny)
    gguf_file: str | None = None  # a GGUF file inside path/package, loaded through transformers' GGUF loader
    revision: str | None = None  # hub revision (branch, tag or commit)
    subfolder: str | None = None  # a subfolder of the source holding the model
    trust_remote_code: bool = False  # run the model repository's own Python code: off unless you trust it
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # weights' dtype once loaded

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        # "./folder", "/abs/folder", "~/folder" are paths; any other string is a hub name (the
        # loader still uses a local folder of that name when one exists).
        if isinstance(data, str):
            return {"path" if data.startswith((".", "/", "~")) else "hub": data}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("from_", "path", "hub", "package", "tiny") if getattr(self, k) is not None]
        if len(given) != 1:
            names = ", ".join(k.rstrip("_") for k in given) or "none"
            raise ValueError(f"give exactly one of from, path, hub, package, tiny (got: {names})")
        return self

    def describe(self) -> str:
        if self.from_:
            return f"from stage '{self.from_}'"
        if self.tiny is not None:
            return "tiny model (built locally)"
        where = self.path or self.hub or f"package {self.package}"
        return f"{where} ({self.gguf_file})" if self.gguf_file else str(where)


# ---------------------------------------------------------------------------------------------
# Tracking, evaluation, pipeline
# ---------------------------------------------------------------------------------------------


class TrackingConfig(Strict):
    """Where metrics go. ``metrics.jsonl`` is always written; W&B and TensorBoard are optional."""

    wandb: Literal["auto", "online", "offline", "disabled"] = (
        "auto"  # auto: online if an API key is set, else offline
    )
    project: str = "rlft"  # W&B project
    entity: str | None = None  # W&B team or user
    tags: list[str] = []  # W&B tags added to every stage's run
    init_timeout: float = 30.0  # seconds to wait for the W&B server before falling back to offline
    tensorboard: bool = False  # also write every scalar to <stage folder>/tensorboard/ (needs `tensorboard`)
    log_model: bool = False  # also log each stage's model folder to its W&B run as a `model` artifact

    @model_validator(mode="after")
    def _tensorboard_installed(self) -> TrackingConfig:
        import importlib.util

        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                "the `tensorboard` package is not installed: `pip install tensorboard`, "
                "or set tracking.tensorboard: false"
            )
        return self


class EvaluateConfig(Strict):
    """The verifiable task reward of greedy generations, measured on held-out prompts after each stage."""

    prompts: str  # JSONL file of held-out rows with a `prompt` (string or chat messages) and any extra fields
    reward: str  # reward function `module:function` or `file.py:function`, f(prompts, completions, **fields)
    max_new_tokens: int = Field(default=32, gt=0)  # generation budget per prompt
    batch_size: int = Field(default=64, gt=0)  # prompts generated at once
    max_prompts: int | None = Field(default=None, gt=0)  # evaluate on the first N prompts only


class PipelineConfig(Strict):
    """The top level of a pipeline file. ``stages`` are validated one by one, by kind."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names the run folder runs/<name>
    description: str = ""  # free text, shown in `rlft validate`
    model: ModelSource | None = None  # default model source for stages that give none
    launch: str | None = None  # default accelerate config file; none: each stage runs as `python -m`
    tracking: TrackingConfig = TrackingConfig()  # W&B settings shared by all stages
    seed: int = 0  # default seed for every stage
    evaluate: EvaluateConfig | None = None  # task reward after each stage (and of the starting model)
    stages: list[dict[str, Any]] = Field(min_length=1)  # each with `kind` and a unique `name`


@dataclass
class Pipeline:
    """A validated pipeline: its top-level config, its stages (typed by kind) and where it was read from."""

    config: PipelineConfig
    stages: list[Any]  # StageBase subclasses, one per stage, defaults from the pipeline applied
    source: Path  # the YAML file
    base_dir: Path  # relative paths resolve against this folder

    @property
    def name(self) -> str:
        return self.config.name


# Keys a stage inherits from the pipeline's top level when it does not set them.
INHERITED = ("model", "launch", "seed")


def load_pipeline(path: str | Path, *, overrides: dict[str, Any] | None = None) -> Pipeline:
    """Read and validate a pipeline file. Raises ConfigError naming the key path on any problem."""
    from rlft.stages import stage_config_class

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with `name` and `stages`")
    for dotted, value in (overrides or {}).items():
        for key in expand_override(raw, dotted):
            _set_dotted(raw, key, value)

    top = _validate(PipelineConfig, raw, prefix="", source=path)
    stages: list[Any] = []
    seen: set[str] = set()
    for i, spec in enumerate(top.stages):
        where = f"stages[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: {where}: a stage is a mapping with `kind` and `name`")
        kind = spec.get("kind")
        if kind is None:
            raise ConfigError(f"{path}: {where}.kind: missing; every stage needs a kind")
        cls = stage_config_class(kind)
        if cls is None:
            from rlft.stages import STAGES

            raise ConfigError(f"{path}: {where}.kind: unknown kind '{kind}'{_suggest(kind, STAGES)}")
        spec = dict(spec)
        for key in INHERITED:
            if key not in spec and key in cls.model_fields:
                value = getattr(top, key)
                if value is not None:
                    spec[key] = (
                        value.model_dump(by_alias=True, exclude_none=True) if key == "model" else value
                    )
        stage = _validate(cls, spec, prefix=where, source=path)
        if stage.name in seen:
            raise ConfigError(
                f"{path}: {where}.name: '{stage.name}' is used by an earlier stage; names must be unique"
            )
        seen.add(stage.name)
        stages.append(stage)

    pipeline = Pipeline(config=top, stages=stages, source=path.resolve(), base_dir=path.resolve().parent)
    check_references(pipeline)
    check_files(pipeline)
    if top.evaluate is not None and "base" not in seen:
        # Measure the starting model first, so the summary shows what each stage changed.
        base = {
            "name": "base",
            "kind": "evaluate",
            "model": stages[0].model.model_dump(by_alias=True, exclude_none=True),
        }
        stages.insert(0, stage_config_class("evaluate").model_validate({**base, "seed": top.seed}))
    return pipeline


def check_references(pipeline: Pipeline) -> None:
    """Every `{from: STAGE}` must name an earlier stage; trainer keys must exist in the trainer's config."""
    from rlft.trainer_fields import check_trainer_keys

    earlier: list[str] = []
    for i, stage in enumerate(pipeline.stages):
        if "model" in type(stage).model_fields and stage.model is None:
            raise ConfigError(
                f"{pipeline.source}: stages[{i}].model: missing; give the stage a model or set the pipeline's model"
            )
        for key, ref in stage.references():
            if ref not in earlier:
                hint = (
                    f"it comes later; move stage '{ref}' before '{stage.name}'"
                    if any(s.name == ref for s in pipeline.stages)
                    else f"earlier stages: {', '.join(earlier) or 'none'}{_suggest(ref, earlier)}"
                )
                raise ConfigError(
                    f"{pipeline.source}: stages[{i}].{key}.from: '{ref}' is not an earlier stage; {hint}"
                )
        trainer_cls = getattr(stage, "trainer_config_class", None)
        if trainer_cls and getattr(stage, "trainer", None):
            problem = check_trainer_keys(trainer_cls, stage.trainer)
            if problem:
                raise ConfigError(f"{pipeline.source}: stages[{i}].trainer.{problem}")
        earlier.append(stage.name)


def check_files(pipeline: Pipeline) -> None:
    """Data sources and evaluation prompts must exist (hub dataset names are checked when loaded)."""
    from rlft.data.config import as_sources
    from rlft.data.sources import resolve_source
    from rlft.errors import DataError

    for i, stage in enumerate(pipeline.stages):
        data = getattr(stage, "data", None)
        for split in ("train", "eval") if data is not None else ():
            for source in as_sources(getattr(data, split)):
                try:
                    resolve_source(source, key=f"stages[{i}].data.{split}", base_dir=pipeline.base_dir)
                except DataError as e:
                    raise ConfigError(f"{pipeline.source}: {e}") from None
    from rlft.pipeline import find_launch_config

    for i, stage in enumerate(pipeline.stages):
        if stage.launch is not None:
            try:
                find_launch_config(stage.launch, base_dir=pipeline.base_dir)
            except ConfigError as e:
                raise ConfigError(f"{pipeline.source}: stages[{i}].{e}") from None
    evaluate = pipeline.config.evaluate
    if evaluate is not None:
        for key, value in (("prompts", evaluate.prompts), ("reward", evaluate.reward.rpartition(":")[0])):
            if key == "reward" and not value.endswith(".py"):
                continue  # a module name: imported when the stage runs
            p = Path(value).expanduser()
            p = p if p.is_absolute() else pipeline.base_dir / p
            if not p.is_file():
                raise ConfigError(f"{pipeline.source}: evaluate.{key}: {p} does not exist")


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------


def _validate(cls: type[BaseModel], data: Any, *, prefix: str, source: Path) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls, prefix=prefix, source=source)) from None


def format_validation_error(
    err: ValidationError, cls: type[BaseModel], *, prefix: str = "", source: Path | None = None
) -> str:
    """One line per problem: `file: key.path: what is wrong`, with a did-you-mean for unknown keys."""
    lines = []
    for e in err.errors():
        loc = [p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        shown, models = _walk(cls, loc[:-1] if e["type"] == "extra_forbidden" else loc)
        if e["type"] == "extra_forbidden":
            key = str(loc[-1])
            path = _join_path(prefix, [*shown, key])
            valid = {f.alias or name for m in models for name, f in m.model_fields.items()}
            hint = _suggest(key, valid) or (f" (valid keys: {', '.join(sorted(valid))})" if valid else "")
            msg = f"unknown key{hint}"
        elif e["type"] == "missing":
            path, msg = _join_path(prefix, shown), "missing; this key is required"
        else:
            path, msg = _join_path(prefix, shown), e["msg"].removeprefix("Value error, ")
            if (
                e["type"] not in ("value_error", "assertion_error")
                and "input" in e
                and not isinstance(e["input"], dict)
            ):
                msg += f" (got {e['input']!r})"
        lines.append(f"{source}: {path}: {msg}" if source else f"{path}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def _join_path(prefix: str, loc: list[Any]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{'from' if part == 'from_' else part}" if out else str(part)
    return out or "(top level)"


def _walk(cls: type[BaseModel], loc: list[Any]) -> tuple[list[Any], list[type[BaseModel]]]:
    """Follow an error location through nested models, lists, dicts and unions.

    Returns the location as the user wrote it (pydantic's union-member tags, like the `lora` in
    `tuning.lora.r`, left out) and the models that could sit at its end (to list their keys).
    """
    shown: list[Any] = []
    models: list[Any] = [cls]
    for part in loc:
        fields = [
            f
            for m in models
            for name, f in m.model_fields.items()
            if isinstance(part, str) and part in (name, f.alias)
        ]
        if fields:
            models = [m for f in fields for m in _inner_models(f.annotation)]
            shown.append(part)
        elif isinstance(part, int):
            shown.append(part)
        else:  # a union member's tag: narrow to the members it names, keep it out of the path
            tagged = [
                m
                for m in models
                if part in {str(f.default) for f in m.model_fields.values()} or m.__name__ == part
            ]
            models = tagged or models
    return shown, models


def _suggest(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _inner_models(annotation: Any) -> list[Any]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, typing.Annotated, tuple):
        return [m for arg in typing.get_args(annotation) for m in _inner_models(arg)]
    return []


def expand_override(raw: dict, dotted: str) -> list[str]:
    """The keys an override sets: itself, or for `data.KEY` (no stage named) the same key under every
    stage that trains on preference data (reward, dpo, kto), e.g. `data.curate.flip_fraction`: a
    preference-data experiment. Address one stage's data as `stages.NAME.data.KEY`."""
    if not dotted.startswith("data."):
        return [dotted]
    from rlft.stages import stage_config_class

    names = [
        s["name"]
        for s in raw.get("stages") or []
        if isinstance(s, dict)
        and "name" in s
        and getattr(stage_config_class(s.get("kind", "")), "preference_data", False)
    ]
    if not names:
        raise ConfigError(
            f"override {dotted}: no stage trains on preference data, so a `data.` key without a stage applies "
            f"nowhere; address a stage: stages.NAME.{dotted}"
        )
    return [f"stages.{name}.{dotted}" for name in names]


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    """Apply an override like `stages.sft.trainer.learning_rate=1e-4` (a stage is addressed by name)."""
    parts = dotted.split(".")
    node: Any = raw
    i = 0
    while i < len(parts) - 1:
        if node is raw and parts[i] == "stages":
            name = parts[i + 1]
            node = next(
                (s for s in raw.get("stages") or [] if isinstance(s, dict) and s.get("name") == name), None
            )
            if node is None:
                raise ConfigError(f"override {dotted}: no stage named '{name}'")
            i += 2
            continue
        node = node.setdefault(parts[i], {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: '{parts[i]}' is not a mapping")
        i += 1
    node[parts[-1]] = value
