"""The ``reward:`` block of a stage's YAML: a reward model, a reward function, or a weighted sum.

    reward: {from: reward}                                   # a reward stage's artifact
    reward: {path: ./my_rm, normalize: true}                 # a RewardModel folder
    reward: reward_models.functions:numeric_match            # shorthand for {function: ...}
    reward:
      sum:
        - {from: reward, weight: 1.0, normalize: true}
        - {function: reward_models.functions:numeric_match, weight: 2.0, kwargs: {tolerance: 0.01}}

``to_spec()`` gives the plain dict that ``reward_models.build_reward`` builds; the checks beyond
types (which keys go with which source) are ``reward_models.check_spec``'s, so YAML and Python
callers get the same messages.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlft.config import also_accepts


class RewardSpec(BaseModel):
    """Exactly one of ``from``, ``path``, ``function``, ``sum``; a string is shorthand for one.

    ``"module:fn"`` / ``"file.py:fn"`` is a function, any other string a path.
    """

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        validate_assignment=True,
        json_schema_extra=also_accepts(
            {"type": "string", "description": "module:fn or file.py:fn: a function; else a path"}
        ),
    )

    from_: str | None = Field(None, alias="from", description="a reward stage's artifact, by stage name")
    path: str | None = Field(None, description="a RewardModel folder (relative to the pipeline file)")
    function: str | None = Field(
        None,
        description="module:function or file.py:function, f(prompts, completions, **fields) -> list[float]",
    )
    sum: list[RewardSpec] | None = Field(
        None, description="a weighted sum of models and functions (one level deep)"
    )
    weight: float = Field(1.0, description="this reward's factor in a sum (or on the whole reward)")
    kwargs: dict[str, Any] = Field(
        {}, description="a function's keyword parameters; a model's batch_size, max_length, dtype"
    )
    normalize: bool = Field(
        False, description="models only: (score - mean) / std from the artifact's reward_stats.json"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"function" if ":" in data else "path": data}
        return data

    @model_validator(mode="after")
    def _check(self) -> RewardSpec:
        from reward_models.composite import check_spec

        check_spec(self.to_spec())  # a RewardSpecError is a ValueError: pydantic reports it with the key path
        return self

    def references(self) -> list[str]:
        """Names of the stages whose artifacts this reward uses (``from``), in order, once each."""
        names = [self.from_] if self.from_ else []
        for entry in self.sum or []:
            names += [n for n in entry.references() if n not in names]
        return names

    def to_spec(self) -> dict[str, Any]:
        """The plain dict for ``reward_models.build_reward``."""
        spec: dict[str, Any] = {}
        if self.from_ is not None:
            spec["from"] = self.from_
        if self.path is not None:
            spec["path"] = self.path
        if self.function is not None:
            spec["function"] = self.function
        if self.sum is not None:
            spec["sum"] = [entry.to_spec() for entry in self.sum]
        spec["weight"] = self.weight
        if self.kwargs:
            spec["kwargs"] = dict(self.kwargs)
        if self.normalize:
            spec["normalize"] = True
        return spec
