"""Pipeline files: YAML (or a dict) -> a validated `PipelineSpec` with one typed config per stage.

Every model forbids unknown keys; errors name the file, the key path and suggest the closest
valid key:

    pipeline.yaml: stages[1].trainer.learning_rte: unknown key for DPOConfig; did you mean learning_rate?

Relative paths in a pipeline file resolve against the folder of that file. A stage's schema is its
kind's config class (rlft.stages.STAGES); the top level's is rlft.config.PipelineConfig.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rlft import yamlio
from rlft.config import PipelineConfig
from rlft.errors import ConfigError
from rlft.resources import find_launch_config
from rlft.stages import STAGES, stage_config_class
from rlft.stages.base import StageBase


@dataclass
class PipelineSpec:
    """A validated pipeline: its top-level config, its stages (typed by kind) and where it came from."""

    config: PipelineConfig
    stages: list[StageBase]  # one config per stage, the pipeline's defaults applied
    source: Path | None  # the YAML file; None for a pipeline given as a dict
    base_dir: Path  # relative paths resolve against this folder
    raw: dict[str, Any]  # the pipeline as read (overrides applied): what the run folder keeps

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def label(self) -> str:
        """How errors name the pipeline: its file, or `pipeline` for one given as a dict."""
        return str(self.source) if self.source is not None else "pipeline"


# Keys a stage inherits from the pipeline's top level when it does not set them.
INHERITED = ("model", "launch", "seed")


def load_pipeline(path: str | Path, *, overrides: dict[str, Any] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file. Raises ConfigError naming the key path on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such pipeline file")
    try:
        raw = yamlio.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping with `name` and `stages`")
    return pipeline_from_dict(raw, base_dir=path.resolve().parent, source=path, overrides=overrides)


def pipeline_from_dict(
    raw: dict[str, Any],
    *,
    base_dir: Path,
    source: Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> PipelineSpec:
    """Validate a pipeline given as a dict (what a YAML file holds); relative paths resolve against `base_dir`."""
    import copy

    raw = copy.deepcopy(raw)
    where = source if source is not None else "pipeline"
    for dotted, value in (overrides or {}).items():
        for key in expand_override(raw, dotted):
            _set_dotted(raw, key, value)

    top = _validate(PipelineConfig, raw, prefix="", source=where)
    stages: list[Any] = []
    seen: set[str] = set()
    for i, spec in enumerate(top.stages):
        at = f"stages[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: {at}: a stage is a mapping with `kind` and `name`")
        kind = spec.get("kind")
        if kind is None:
            raise ConfigError(f"{where}: {at}.kind: missing; every stage needs a kind")
        cls = stage_config_class(kind)
        if cls is None:
            raise ConfigError(f"{where}: {at}.kind: unknown kind '{kind}'{_suggest(kind, STAGES)}")
        spec = dict(spec)
        for key in INHERITED:
            if key not in spec and key in cls.model_fields:
                value = getattr(top, key)
                if value is not None:
                    spec[key] = (
                        value.model_dump(by_alias=True, exclude_none=True) if key == "model" else value
                    )
        stage = _validate(cls, spec, prefix=at, source=where)
        if stage.name in seen:
            raise ConfigError(
                f"{where}: {at}.name: '{stage.name}' is used by an earlier stage; names must be unique"
            )
        seen.add(stage.name)
        stages.append(stage)

    pipeline = PipelineSpec(
        config=top,
        stages=stages,
        source=source.resolve() if source is not None else None,
        base_dir=Path(base_dir).resolve(),
        raw=raw,
    )
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


def check_references(pipeline: PipelineSpec) -> None:
    """Every `{from: STAGE}` must name an earlier stage; trainer keys must exist in the trainer's config."""
    from rlft.trainer_fields import check_trainer_keys

    earlier: list[str] = []
    for i, stage in enumerate(pipeline.stages):
        if "model" in type(stage).model_fields and stage.model is None:
            raise ConfigError(
                f"{pipeline.label}: stages[{i}].model: missing; give the stage a model or set the pipeline's model"
            )
        for key, ref in stage.references():
            if ref not in earlier:
                hint = (
                    f"it comes later; move stage '{ref}' before '{stage.name}'"
                    if any(s.name == ref for s in pipeline.stages)
                    else f"earlier stages: {', '.join(earlier) or 'none'}{_suggest(ref, earlier)}"
                )
                raise ConfigError(
                    f"{pipeline.label}: stages[{i}].{key}.from: '{ref}' is not an earlier stage; {hint}"
                )
        for key, ref, file in stage.data_references():
            check_data_reference(pipeline, i, f"{key}.from", ref, file, earlier)
        trainer_cls = getattr(stage, "trainer_config_class", None)
        if trainer_cls and getattr(stage, "trainer", None):
            problem = check_trainer_keys(trainer_cls, stage.trainer)
            if problem:
                raise ConfigError(f"{pipeline.label}: stages[{i}].trainer.{problem}")
        earlier.append(stage.name)


def check_data_reference(
    pipeline: PipelineSpec, i: int, key: str, ref: str, file: str, earlier: list[str]
) -> None:
    """A `{from: STAGE}` data source of stage `i` must name an earlier stage that writes `file`."""
    at = f"{pipeline.label}: stages[{i}].{key}"
    stages = {s.name: s for s in pipeline.stages}
    if ref not in earlier:
        hint = (
            f"it comes later; move stage '{ref}' before '{pipeline.stages[i].name}'"
            if ref in stages
            else f"earlier stages: {', '.join(earlier) or 'none'}{_suggest(ref, earlier)}"
        )
        raise ConfigError(f"{at}: '{ref}' is not an earlier stage; {hint}")
    written = stages[ref].output_files()
    if not written:
        raise ConfigError(
            f"{at}: stage '{ref}' ({stages[ref].kind}) writes no data; a data source `from:` names a "
            "generate stage (kind: generate)"
        )
    if file not in written:
        raise ConfigError(
            f"{at}: stage '{ref}' writes {', '.join(written)}, not {file}; choose one with `file:` or add it "
            f"to stage '{ref}''s `write:`"
        )


def check_files(pipeline: PipelineSpec) -> None:
    """Data sources, launch configs and evaluation prompts must exist (hub dataset names are checked when loaded)."""
    from reward_models.loading import function_problem
    from rlft.data.config import as_sources
    from rlft.data.sources import check_text_files, resolve_source
    from rlft.errors import DataError

    for i, stage in enumerate(pipeline.stages):
        for key, data in stage.data_sections().items():
            for split in ("train", "eval"):
                for source in as_sources(getattr(data, split)):
                    if source.from_ is not None:  # an earlier stage's output: checked by check_references
                        continue
                    at = f"stages[{i}].{key}.{split}"
                    try:
                        check_text_files(resolve_source(source, key=at, base_dir=pipeline.base_dir), key=at)
                    except DataError as e:
                        raise ConfigError(f"{pipeline.label}: {e}") from None
        for key, value in stage.input_files().items():
            p = Path(value).expanduser()
            p = p if p.is_absolute() else pipeline.base_dir / p
            if not p.is_file():
                raise ConfigError(f"{pipeline.label}: stages[{i}].{key}: {p} does not exist")
    check_models(pipeline)
    check_rewards(pipeline)
    for i, stage in enumerate(pipeline.stages):
        if stage.launch is not None:
            try:
                find_launch_config(stage.launch, base_dir=pipeline.base_dir)
            except ConfigError as e:
                raise ConfigError(f"{pipeline.label}: stages[{i}].{e}") from None
    evaluate = pipeline.config.evaluate
    if evaluate is not None:
        for key, value in (("prompts", evaluate.prompts), ("reward", evaluate.reward.rpartition(":")[0])):
            if key == "reward":
                problem = function_problem(evaluate.reward, base_dir=pipeline.base_dir)
                if problem:
                    raise ConfigError(f"{pipeline.label}: evaluate.reward: {problem}")
                continue
            p = Path(value).expanduser()
            p = p if p.is_absolute() else pipeline.base_dir / p
            if not p.is_file():
                raise ConfigError(f"{pipeline.label}: evaluate.{key}: {p} does not exist")
        if evaluate.judge is not None:  # used by `rlft eval` only, but a wrong path is best found now
            source = evaluate.judge.model
            at = f"{pipeline.label}: evaluate.judge.model.{'path' if source.path else 'hub'}"
            local_model_folder(source, pipeline.base_dir, at=at, needs_tokenizer=True)


def check_models(pipeline: PipelineSpec) -> None:
    """Every local model folder a stage names (path, or a hub name that is a local folder) must hold a
    config, weights (safetensors, or pickle with allow_pickle) and, for the stage's own model, a tokenizer."""
    from rlft.config import ModelSource

    for i, stage in enumerate(pipeline.stages):
        folders: dict[str, Path] = {}
        for key in type(stage).model_fields:
            source = getattr(stage, key)
            if not isinstance(source, ModelSource):
                continue
            at = f"{pipeline.label}: stages[{i}].{key}.{'path' if source.path else 'hub'}"
            folder = local_model_folder(source, pipeline.base_dir, at=at, needs_tokenizer=key == "model")
            if folder is not None:
                folders[key] = folder
        if "model" in folders and "reference" in folders:
            problem = tokenizer_mismatch(folders["model"], folders["reference"])
            if problem:
                raise ConfigError(
                    f"{pipeline.label}: stages[{i}].reference: {problem}; the reference scores the policy's token ids, "
                    "so it needs the policy's tokenizer: use a model of the same family, or leave reference out (it "
                    "defaults to the starting model)"
                )


def local_model_folder(source: Any, base_dir: Path, *, at: str, needs_tokenizer: bool) -> Path | None:
    """The local folder a model source names, checked (ConfigError at `at` when it is missing or not a loadable
    model folder); None for sources checked when loaded (a hub name, {from: STAGE}, a package, a tiny model)
    and for GGUF files (present: checked here; their content: when loaded)."""
    from rlft.models.loading import model_folder_problem, model_memory_problem

    if source.path is None and source.hub is None:
        return None
    folder = Path(source.path or source.hub).expanduser()
    folder = folder if folder.is_absolute() else base_dir / folder
    if source.hub is not None and not folder.is_dir():
        return None  # a hub name: checked when loaded
    if not folder.exists():
        raise ConfigError(
            f"{at}: {folder} does not exist (relative paths start from the pipeline file's folder)"
        )
    if source.subfolder:
        folder = folder / source.subfolder
    if source.gguf_file:
        if not (folder / source.gguf_file).is_file():
            raise ConfigError(f"{at}: {folder} has no file {source.gguf_file} (gguf_file)")
        return None
    problem = model_folder_problem(folder, allow_pickle=source.allow_pickle, needs_tokenizer=needs_tokenizer)
    problem = problem or model_memory_problem(folder, source.dtype)
    if problem:
        raise ConfigError(f"{at}: {problem}")
    return folder


def tokenizer_mismatch(first: Path, second: Path) -> str | None:
    """'its tokenizer differs ...' when both folders have a tokenizer.json and their vocabularies differ."""
    import json

    vocabs = []
    for folder in (first, second):
        try:
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model") or {}
        except (OSError, ValueError, AttributeError):
            return None  # no tokenizer.json (or none rlft can read): checked when loaded
        vocabs.append(model.get("vocab"))
    if vocabs[0] is None or vocabs[1] is None or vocabs[0] == vocabs[1]:
        return None
    return (
        f"its tokenizer ({second}, {len(vocabs[1])} tokens) differs from the model's ({first}, {len(vocabs[0])} "
        "tokens)"
    )


def check_rewards(pipeline: PipelineSpec) -> None:
    """Every reward function of a stage (`module:fn`, `file.py:fn`) must be found (not run), and every
    reward model folder (`path:`) must exist and hold a model."""
    from reward_models.loading import function_problem
    from rlft.models.loading import model_folder_problem
    from rlft.rewards import RewardSpec

    def entries(spec: RewardSpec, at: str):
        yield spec, at
        for j, entry in enumerate(spec.sum or []):
            yield from entries(entry, f"{at}.sum[{j}]")

    for i, stage in enumerate(pipeline.stages):
        for key in type(stage).model_fields:
            spec = getattr(stage, key)
            if not isinstance(spec, RewardSpec):
                continue
            for entry, at in entries(spec, f"{pipeline.label}: stages[{i}].{key}"):
                if entry.function is not None:
                    problem = function_problem(entry.function, base_dir=pipeline.base_dir)
                    if problem:
                        raise ConfigError(f"{at}.function: {problem}")
                if entry.path is not None:
                    folder = Path(entry.path).expanduser()
                    folder = folder if folder.is_absolute() else pipeline.base_dir / folder
                    problem = model_folder_problem(folder, needs_tokenizer=True)
                    if problem:
                        raise ConfigError(f"{at}.path: reward model {problem}")


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------


def _validate(cls: type[BaseModel], data: Any, *, prefix: str, source: Path | str) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, cls, prefix=prefix, source=source)) from None


def format_validation_error(
    err: ValidationError, cls: type[BaseModel], *, prefix: str = "", source: Path | str | None = None
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


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings (`rlft run --set`) as a dict; each VALUE is parsed as YAML (`50` is a number)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item}: write KEY=VALUE, e.g. stages.sft.trainer.max_steps=50")
        overrides[key] = yamlio.safe_load(value)
    return overrides


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
