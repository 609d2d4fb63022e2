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
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rlft.data.formats import CANONICAL_FIELDS


class DataSource(BaseModel):
    """One place rows come from. A plain string in YAML is shorthand for `{path: ...}`."""

    model_config = ConfigDict(extra="forbid")

    path: str  # .jsonl/.json/.csv/.parquet file, glob, save_to_disk folder, or hub dataset name
    split: str = "train"  # split of a hub dataset or saved DatasetDict; files have only "train"
    subset: str | None = None  # hub dataset configuration (subset) name
    weight: float | None = Field(default=None, gt=0)  # share of the train mix; see the module doc


SourceSpec = DataSource | str | list[DataSource | str]


class DataConfig(BaseModel):
    """Data for one stage. Paths are relative to the YAML file's folder."""

    model_config = ConfigDict(extra="forbid")

    train: SourceSpec  # a source, a path string, or a list of them (mixed, see the module doc)
    eval: SourceSpec | None = None  # held-out sources; None = split eval_fraction off train
    eval_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)  # with no eval source: share of train held out
    fields: dict[str, str] = {}  # canonical field -> your column name, e.g. {"completion": "answer"}
    on_invalid: Literal["error", "skip"] = "error"  # skip: invalid rows go to the rejects file
    seed: int = 0  # seeds the eval split and weighted sampling
    max_rows: int | None = Field(default=None, gt=0)  # read only the first N train rows; None = all

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
        if any(s.weight is not None for s in as_sources(self.eval)):
            raise ValueError("eval: weights mix train sources only; eval sources are concatenated")
        return self


def as_sources(spec: SourceSpec | None) -> list[DataSource]:
    """A source spec as a list of DataSource (a string becomes DataSource(path=string))."""
    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    return [DataSource(path=s) if isinstance(s, str) else s for s in items]
