"""Config schemas: the typed, strict pydantic models a pipeline file's top level is made of.

A pipeline file has a ``name``, defaults shared by its stages (``model``, ``launch``,
``tracking``, ``seed``), an optional ``evaluate`` block (the verifiable task reward measured
after each stage) and a list of ``stages``, each with a ``kind`` and a unique ``name`` (their
schemas are the stage kinds' own, in rlft/stages/). Every model forbids unknown keys, and every
field says what it does in its description: `rlft config show`, `rlft config schema` and the
errors of rlft/pipeline_file.py (which reads YAML into these models) come from them.

This module only declares; it imports nothing of rlft but its errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


def also_accepts(*shorthands: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` for a model or field whose "before" validator also takes a shorthand (a
    string, `true`): its JSON Schema (`rlft config schema`) then accepts the shorthands beside the full
    form, as the validator does. Give each shorthand as a JSON Schema, e.g. {"type": "string"}."""

    def extra(schema: dict[str, Any]) -> None:
        full = {
            key: schema.pop(key) for key in list(schema) if key not in ("title", "description", "default")
        }
        branches = full["anyOf"] if list(full) == ["anyOf"] else [full]
        schema["anyOf"] = [*branches, *shorthands]

    return extra


# ---------------------------------------------------------------------------------------------
# Model sources
# ---------------------------------------------------------------------------------------------


class TinySpec(Strict):
    """What tiny model to build (rlft.models.tiny): its shape, its tokenizer's size, and the text to train that on."""

    hidden_size: int = Field(
        64, description="width of the residual stream; 64 trains fastest, 128 learns more"
    )
    num_layers: int = Field(2, description="transformer blocks")
    num_heads: int = Field(4, description="attention heads; must divide hidden_size")
    intermediate_size: int | None = Field(None, description="MLP width; None means 4 * hidden_size")
    vocab_size: int = Field(
        512, description="target BPE size, counting the 256-byte alphabet and the special tokens"
    )
    max_position_embeddings: int = Field(256, description="longest sequence (prompt + completion) in tokens")
    tokenizer_texts: list[str] = Field(
        [],
        description="JSONL files (relative to the pipeline file); every string in every row is tokenizer text",
    )
    seed: int = Field(0, description="seeds the weight initialisation")


class ModelSource(Strict):
    """Where a stage's model comes from: exactly one of ``from``, ``path``, ``hub``, ``package``, ``tiny``.

    A plain string is shorthand: ``./folder``, ``/abs/folder`` and ``~/folder`` are a ``path``,
    anything else a ``hub`` name (the loader still uses a local folder of that name when one exists).
    """

    model_config = ConfigDict(
        json_schema_extra=also_accepts(
            {"type": "string", "description": "./folder, /abs/folder or ~/folder: a path; else a hub name"}
        )
    )

    from_: str | None = Field(None, alias="from", description="an earlier stage's artifact, by stage name")
    path: str | None = Field(
        None,
        description="a local Hugging Face folder (or the folder holding gguf_file), relative to the pipeline file",
    )
    hub: str | None = Field(None, description="a hub model name, e.g. HuggingFaceTB/SmolLM2-135M-Instruct")
    package: str | None = Field(
        None, description="an installed Python package that ships the weights (found, not imported)"
    )
    tiny: TinySpec | None = Field(
        None, description="build a tiny Llama + BPE tokenizer here (see rlft.models.tiny)"
    )
    gguf_file: str | None = Field(
        None, description="a GGUF file inside path/package, loaded through transformers' GGUF loader"
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    subfolder: str | None = Field(None, description="a subfolder of the source holding the model")
    trust_remote_code: bool = Field(
        False, description="run the model repository's own Python code: off unless you trust it"
    )
    allow_pickle: bool = Field(
        False,
        description="also load weights from pickle files (pytorch_model.bin): off, since unpickling a file can run "
        "any code; convert the weights to safetensors instead when you can",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="the weights' dtype once loaded"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
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

    wandb: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto",
        description="auto: online if WANDB_API_KEY is set, else offline; WANDB_MODE in the environment overrides it",
    )
    project: str = Field("rlft", description="W&B project")
    entity: str | None = Field(None, description="W&B team or user (default: yours)")
    tags: list[str] = Field([], description="W&B tags added to every stage's run")
    init_timeout: float = Field(
        30.0, description="seconds to wait for the W&B server before falling back to offline"
    )
    tensorboard: bool = Field(
        False,
        description="also write every scalar to <stage folder>/tensorboard/ (needs the `tensorboard` package)",
    )
    log_model: bool = Field(
        False, description="also log each stage's model folder to its W&B run as a `model` artifact"
    )

    @model_validator(mode="after")
    def _tensorboard_installed(self) -> TrackingConfig:
        import importlib.util

        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ValueError(
                "the `tensorboard` package is not installed: `pip install tensorboard`, "
                "or set tracking.tensorboard: false"
            )
        return self


DEFAULT_JUDGE_TEMPLATE = """Which answer to the request is better: more correct, more helpful, following the request exactly?

Request:
{prompt}

Answer A:
{first}

Answer B:
{second}

Reply with one letter: A or B."""


class JudgeConfig(Strict):
    """A pairwise LLM judge for `rlft eval` (rlft/judge.py): asked which of two answers is better, in both
    orders; decided by its next-token log-probs of the two labels (no sampling); a tie when the orders disagree."""

    model: ModelSource = Field(
        description="the judge: any causal LM a model source loads ({path: ...}, a hub name, {package: ...}, {from: STAGE})"
    )
    template: str = Field(
        DEFAULT_JUDGE_TEMPLATE,
        description="the question, with {prompt}, {first} and {second} (the answers as shown); it should ask for one of `labels`. Write other braces twice: {{ }}",
    )
    labels: tuple[str, str] = Field(
        ("A", "B"),
        description="what the judge answers for the first / the second answer; the log-probs of their first tokens decide",
    )
    chat_template: bool = Field(
        True,
        description="send the question as a user turn through the judge's chat template (when it has one); false: as plain text",
    )
    batch_size: int = Field(8, gt=0, description="questions per forward pass of the judge")

    @model_validator(mode="after")
    def _template_and_labels(self) -> JudgeConfig:
        marks = {name: f"\x00{name}\x00" for name in ("prompt", "first", "second")}
        try:
            filled = self.template.format(**marks)
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"judge.template: cannot fill it in ({type(e).__name__}: {e}); use only {{prompt}}, {{first}} "
                "and {second}, and write any other brace twice"
            ) from None
        missing = [name for name, mark in marks.items() if mark not in filled]
        if missing:
            raise ValueError(f"judge.template: has no {', '.join('{' + m + '}' for m in missing)}")
        if not all(label.strip() for label in self.labels) or self.labels[0] == self.labels[1]:
            raise ValueError(f"judge.labels: two different, non-empty labels, got {list(self.labels)}")
        return self


class EvaluateConfig(Strict):
    """The verifiable task reward of greedy generations, measured on held-out prompts after each stage."""

    prompts: str = Field(
        description="JSONL file of held-out rows with a `prompt` (string or chat messages) and any extra fields"
    )
    reward: str = Field(
        description="reward function `module:function` or `file.py:function`, f(prompts, completions, **fields)"
    )
    max_new_tokens: int = Field(32, gt=0, description="generation budget per prompt")
    batch_size: int = Field(64, gt=0, description="prompts generated at once")
    max_prompts: int | None = Field(None, gt=0, description="evaluate on the first N prompts only")
    judge: JudgeConfig | None = Field(
        None,
        description="a pairwise LLM judge for `rlft eval`: each stage's answers against its baseline's (judge_win_rate)",
    )


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class PipelineConfig(Strict):
    """The top level of a pipeline file. ``stages`` are validated one by one, by kind."""

    name: str = Field(pattern=NAME_PATTERN, description="names the run folder runs/<name>")
    description: str = Field("", description="free text, shown in `rlft validate`")
    model: ModelSource | None = Field(None, description="default model source for stages that give none")
    launch: str | None = Field(
        None,
        description="default accelerate config (a shipped name like zero3, or a path); none: each stage runs as `python -m`",
    )
    tracking: TrackingConfig = Field(
        TrackingConfig(), description="W&B and TensorBoard settings shared by all stages"
    )
    seed: int = Field(0, description="default seed for every stage")
    evaluate: EvaluateConfig | None = Field(
        None, description="task reward after each stage (and of the starting model, as stage `base`)"
    )
    report: bool = Field(
        True,
        description="write runs/<name>/report.html (lineage, curves, samples; `rlft report`) after a run",
    )
    stages: list[dict[str, Any]] = Field(
        min_length=1,
        description="the stages in order, each with a `kind` and a unique `name` (see `rlft config show`)",
    )
