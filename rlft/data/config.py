"""The `data:` section of a stage: where the rows come from and how to read them.

```yaml
data:
  train: data/train.jsonl                  # or a list of sources, or {path: ..., weight: 0.7}
  eval_fraction: 0.05
  fields: {completion: answer}            # canonical name -> your column
  on_invalid: skip                         # invalid rows go to the stage's rejects file
```

Mixing sources: without weights, sources are concatenated in order. With weights (give one to
every source or to none), each source is downsampled, seeded, to its share of the mix: the mix
is as large as it can be without repeating a row, i.e. it stops when the first source runs out
(LLaMA-Factory's `interleave_under` strategy). To use a small source more often, repeat rows
in the file; rlft does not upsample.

Curation (`curate:`, all off by default) runs on the train rows after the eval split, in this
order: dedup -> near_dedup -> drop_identical_pairs -> length -> balance -> flip_fraction (see
rlft.data.curate). Decontamination (`decontaminate:`, on by default) then removes train rows whose
prompt an eval row also has (see rlft.data.split). Every removed row goes to the stage's rejects
file with the step and the reason.

```yaml
data:
  train: data/prefs.jsonl
  eval_fraction: 0.05
  stratify_by: source                      # keep each source's share in the eval split
  curate:
    dedup: true
    near_dedup: {threshold: 0.85}           # or `near_dedup: true` for the defaults
    drop_identical_pairs: true
    length: {max_prompt_tokens: 512, max_response_tokens: 1024}
    balance: {column: source, strategy: cap, max_per_category: 5000}
  decontaminate: {exact: true, ngram: 13}   # the default; null turns it off
```
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlft.config import also_accepts
from rlft.data.formats import CANONICAL_FIELDS


class DataSource(BaseModel):
    """One place rows come from: a `path`, or `from` an earlier stage's output (a generate stage's
    JSONL). A plain string in YAML is shorthand for `{path: ...}`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str | None = Field(
        None,
        description=".jsonl/.json/.csv/.parquet file, glob, save_to_disk folder, or hub dataset name "
        "(relative to the pipeline file)",
    )
    from_: str | None = Field(
        None,
        alias="from",
        description="an earlier generate stage, by name: its output file (`file`) is the source, hashed into "
        "this stage's inputs",
    )
    file: Literal["pairs", "best_of_n", "scored"] | None = Field(
        None, description="with `from`: which of the generate stage's files (default pairs)"
    )
    split: str = Field(
        "train", description='split of a hub dataset or saved DatasetDict; files have only "train"'
    )
    subset: str | None = Field(None, description="hub dataset configuration (subset) name")
    weight: float | None = Field(
        None,
        gt=0,
        description="share of the train mix (give one to every source or to none); sources are downsampled, "
        "never repeated",
    )

    @model_validator(mode="after")
    def _one_place(self) -> DataSource:
        if (self.path is None) == (self.from_ is None):
            raise ValueError("give a source either `path` or `from` (an earlier generate stage), not both")
        if self.file is not None and self.from_ is None:
            raise ValueError("`file` picks a generate stage's output; it goes with `from`")
        if self.from_ is not None and (self.split != "train" or self.subset is not None):
            raise ValueError("`split` and `subset` apply to hub datasets; a `from` source is one JSONL file")
        return self

    @property
    def stage_file(self) -> str:
        """With `from`: the file name in that stage's folder (`pairs.jsonl` by default)."""
        return f"{self.file or 'pairs'}.jsonl"


SourceSpec = DataSource | str | list[DataSource | str]


def _true_means_defaults(value: object) -> object:
    """`key: true` in YAML means the section with its defaults, `key: false` means off (None)."""
    if value is True:
        return {}
    if value is False:
        return None
    return value


TRUE_MEANS_DEFAULTS = {
    "type": "boolean",
    "description": "true: the defaults; false: off",
}  # in the JSON Schema


class NearDedupConfig(BaseModel):
    """Near-duplicate removal: MinHash signatures of character shingles, candidates from LSH."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.85, gt=0.0, le=1.0, description="Jaccard similarity that makes a duplicate: lower drops more"
    )
    num_perm: int = Field(128, ge=16, description="MinHash permutations: more = better estimates, slower")
    shingle: int = Field(5, ge=1, description="characters per shingle: smaller = more lenient to rewording")


class LengthConfig(BaseModel):
    """Bounds on token counts of the stage's tokenizer; a row outside any bound is removed.
    Responses are the completion, or chosen and rejected (a pair goes if either is out)."""

    model_config = ConfigDict(extra="forbid")

    min_prompt_tokens: int | None = Field(None, ge=0, description="drop shorter prompts; None = no bound")
    max_prompt_tokens: int | None = Field(None, gt=0, description="drop longer prompts; None = no bound")
    min_response_tokens: int | None = Field(None, ge=0, description="drop shorter responses; None = no bound")
    max_response_tokens: int | None = Field(None, gt=0, description="drop longer responses; None = no bound")

    @model_validator(mode="after")
    def _ordered(self) -> LengthConfig:
        for part in ("prompt", "response"):
            low, high = getattr(self, f"min_{part}_tokens"), getattr(self, f"max_{part}_tokens")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{part}_tokens ({low}) is above max_{part}_tokens ({high})")
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError(
                "set at least one of min_prompt_tokens, max_prompt_tokens, min_response_tokens, "
                "max_response_tokens (or remove length)"
            )
        return self


class BalanceConfig(BaseModel):
    """Seeded downsampling so that no value of one column dominates the train rows.
    cap: at most max_per_category rows of each value; equal: each as many as the smallest has."""

    model_config = ConfigDict(extra="forbid")

    column: str = Field(description="the column whose values are the categories, e.g. source or task")
    strategy: Literal["cap", "equal"] = Field(
        "cap", description="cap: at most max_per_category rows each; equal: each as many as the smallest has"
    )
    max_per_category: int | None = Field(
        None, gt=0, description="cap's limit (required with cap); with equal, a cap too"
    )

    @model_validator(mode="after")
    def _cap_has_a_limit(self) -> BalanceConfig:
        if self.strategy == "cap" and self.max_per_category is None:
            raise ValueError("strategy cap needs max_per_category (the most rows any category keeps)")
        return self


class CurateConfig(BaseModel):
    """Curation of the train rows (never the eval rows: they are measured as given), after the
    eval split, in the order of the fields below; every step is off by default."""

    model_config = ConfigDict(extra="forbid")

    dedup: bool = Field(
        False, description="drop rows equal to an earlier one after NFKC, lowercase, collapsed spaces"
    )
    near_dedup: NearDedupConfig | None = Field(
        None,
        description="drop near-duplicates of earlier rows (MinHash/LSH); true = the defaults",
        json_schema_extra=also_accepts(TRUE_MEANS_DEFAULTS),
    )
    drop_identical_pairs: bool = Field(
        False, description="drop pairs whose chosen = rejected, normalised or rendered"
    )
    length: LengthConfig | None = Field(
        None, description="drop rows outside token bounds (counted with the stage's tokenizer)"
    )
    balance: BalanceConfig | None = Field(
        None, description="downsample the rows of over-represented values of a column"
    )
    flip_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="seeded label noise: swap chosen/rejected (flip `label`) in this share of rows (robustness "
        "experiments)",
    )

    _near_dedup_shorthand = field_validator("near_dedup", mode="before")(_true_means_defaults)

    def steps(self) -> list[str]:
        """The names of the steps this config turns on, in the order they run."""
        on = {
            "dedup": self.dedup,
            "near_dedup": self.near_dedup is not None,
            "drop_identical_pairs": self.drop_identical_pairs,
            "length": self.length is not None,
            "balance": self.balance is not None,
            "flip": self.flip_fraction > 0,
        }
        return [name for name, active in on.items() if active]


class DecontaminateConfig(BaseModel):
    """Removing train rows whose prompt also appears in the eval set (GPT-3's n-gram overlap test)."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = Field(
        True, description="drop train rows whose prompt equals an eval prompt after normalisation"
    )
    ngram: int | None = Field(
        13,
        ge=1,
        description="drop train rows whose prompt shares an n-word run with an eval prompt: smaller = "
        "stricter; None: off",
    )


class DataConfig(BaseModel):
    """Data for one stage. Paths are relative to the YAML file's folder."""

    model_config = ConfigDict(extra="forbid")

    train: SourceSpec = Field(
        description="a source ({path, split, subset, weight}, or {from: STAGE, file}: a generate stage's output), a path string, or a list of them (mixed by weight)"
    )
    eval: SourceSpec | None = Field(
        None, description="held-out sources; None = split eval_fraction off train"
    )
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="with no eval source: share of train held out for evaluation"
    )
    fields: dict[str, str] = Field(
        {}, description='canonical field -> your column name, e.g. {"completion": "answer"}'
    )
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="error: stop at the first invalid row; skip: invalid rows go to the rejects file"
    )
    seed: int = Field(0, description="seeds the eval split and weighted sampling")
    max_rows: int | None = Field(None, gt=0, description="read only the first N train rows; None = all")
    stratify_by: str | None = Field(
        None, description="with eval_fraction: keep this column's category shares in both splits"
    )
    curate: CurateConfig = Field(
        CurateConfig(), description="curation of the train rows (all steps off by default)"
    )
    decontaminate: DecontaminateConfig | None = Field(
        DecontaminateConfig(),
        description="drop train rows whose prompt overlaps an eval prompt (on by default); null: off",
        json_schema_extra=also_accepts(TRUE_MEANS_DEFAULTS),
    )

    _decontaminate_shorthand = field_validator("decontaminate", mode="before")(_true_means_defaults)

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, fields: dict[str, str]) -> dict[str, str]:
        for canonical, column in fields.items():
            if canonical not in CANONICAL_FIELDS:
                raise ValueError(
                    f"unknown canonical field {canonical!r}; the keys of fields are {', '.join(CANONICAL_FIELDS)} "
                    f"(write {{canonical: your_column}}, e.g. {{completion: answer}})"
                )
            if not column:
                raise ValueError(f"fields.{canonical} is empty; give the name of your column")
        columns = list(fields.values())
        repeated = sorted({c for c in columns if columns.count(c) > 1})
        if repeated:
            raise ValueError(f"column {repeated[0]!r} is mapped to more than one canonical field")
        return fields

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.eval is not None and self.eval_fraction > 0:
            raise ValueError(
                "give either eval (held-out sources) or eval_fraction (split off train), not both"
            )
        weighted = [s.weight is not None for s in as_sources(self.train)]
        if any(weighted) and not all(weighted):
            raise ValueError("train: give a weight to every source or to none")
        if self.stratify_by is not None and self.eval_fraction == 0:
            raise ValueError("stratify_by shapes the eval_fraction split; set eval_fraction too")
        if any(s.weight is not None for s in as_sources(self.eval)):
            raise ValueError("eval: weights mix train sources only; eval sources are concatenated")
        return self


def as_sources(spec: SourceSpec | None) -> list[DataSource]:
    """A source spec as a list of DataSource (a string becomes DataSource(path=string))."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    return [DataSource(path=s) if isinstance(s, str) else s for s in items]


def stage_sources(cfg: DataConfig) -> list[tuple[str, DataSource]]:
    """(split, source) of every source of `cfg` that reads an earlier stage's output (`from`)."""
    return [
        (split, s)
        for split in ("train", "eval")
        for s in as_sources(getattr(cfg, split))
        if s.from_ is not None
    ]


def with_stage_paths(cfg: DataConfig, stage_dirs: dict[str, str], *, section: str) -> DataConfig:
    """`cfg` with every `from: STAGE` source replaced by the path of that stage's file in its finished
    folder (`stage_dirs`: stage name -> folder). Raises ValueError naming the key when it is missing."""
    from pathlib import Path

    if not stage_sources(cfg):
        return cfg

    def resolve(spec: SourceSpec | None, key: str) -> SourceSpec | None:
        if spec is None:
            return None
        out = []
        for i, s in enumerate(as_sources(spec)):
            if s.from_ is not None:
                if s.from_ not in stage_dirs:
                    raise ValueError(
                        f"{key}[{i}].from: stage '{s.from_}' has no finished output; run it first"
                    )
                path = Path(stage_dirs[s.from_]) / s.stage_file
                if not path.is_file():
                    raise ValueError(
                        f"{key}[{i}]: stage '{s.from_}' wrote no {s.stage_file} (see its `write:`)"
                    )
                s = DataSource(path=str(path), weight=s.weight)
            out.append(s)
        return out

    return cfg.model_copy(
        update={"train": resolve(cfg.train, f"{section}.train"), "eval": resolve(cfg.eval, f"{section}.eval")}
    )
