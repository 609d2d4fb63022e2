"""A reward built from a spec: one reward model or function, or a weighted sum of them.

A spec is a dict (what a YAML ``reward:`` block holds) with exactly one of::

    {"from": "reward"}                             a reward stage's artifact, by stage name
    {"path": "runs/x/reward"}                      a RewardModel folder
    {"function": "module:fn"}                      a reward function (or "file.py:fn")
    {"sum": [{...one of the above..., "weight": 2.0}, ...]}   a weighted sum

and optionally ``weight`` (default 1.0), ``normalize`` (models only: (score - mean) / std from
reward_stats.json) and ``kwargs`` (a function's keyword parameters, bound with
``functools.partial``; for a model, RewardModel options: batch_size, max_length, dtype, device).
A string is shorthand: ``"module:fn"`` / ``"file.py:fn"`` is a function, anything else a path.

``build_reward`` returns a ``CompositeReward``, itself a reward function with the one signature,
which keeps each component's unweighted scores of the last call in ``last_components``, so a
trainer can log them (``rewards/<name>``).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reward_models.loading import RewardLoadError, load_function

SOURCES = ("from", "path", "function", "sum")
KEYS = (*SOURCES, "weight", "kwargs", "normalize")
MODEL_OPTIONS = ("batch_size", "max_length", "dtype", "device")  # kwargs a model entry may set

RewardFn = Callable[..., list[float]]


class RewardSpecError(ValueError):
    """A reward spec that cannot be built; the message says where and what to write."""


class RewardOutputError(ValueError):
    """A reward function returned what cannot be a reward (another number of scores than completions)."""


class RewardRaisedError(RewardOutputError):
    """A reward function raised: one line naming the function, the exception and where it was raised
    in the user's code (the whole traceback stays chained, as ``__cause__``, for the stage's log)."""


def _raised_where(error: BaseException) -> str:
    """`file:line in function` of the innermost frame of the exception's traceback."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown place"
    last = frames[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


@dataclass
class Component:
    name: str  # unique within the composite; the key of last_components
    weight: float
    fn: RewardFn


class CompositeReward:
    """Per-sample weighted sum of reward functions: ``sum_k weight_k * f_k(prompts, completions, **fields)``.

    ``last_components`` maps each component's name to its unweighted scores from the last call.
    """

    def __init__(self, components: Sequence[Component], *, name: str = "reward") -> None:
        if not components:
            raise RewardSpecError("a composite reward needs at least one component")
        self.components = list(components)
        self.last_components: dict[str, list[float]] = {}
        self.name = name
        self.__name__ = name  # TRL names a callable reward by its __name__ in its logs

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.components}

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> list[float]:
        n = len(prompts)
        if len(completions) != n:
            raise ValueError(f"{self.name}: {n} prompts but {len(completions)} completions")
        totals = [0.0] * n
        scores: dict[str, list[float]] = {}
        for c in self.components:
            try:
                values = c.fn(prompts, completions, **fields)
            except RewardOutputError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's function: say which, what and where
                raise RewardRaisedError(
                    f"reward '{c.name}' raised {type(e).__name__}: {e} (at {_raised_where(e)}); fix the "
                    "function (the whole traceback is in the stage's stage.log)"
                ) from e
            if len(values) != n:
                raise RewardOutputError(
                    f"reward '{c.name}' returned {len(values)} rewards for {n} completions; a reward function "
                    "returns one float per completion"
                )
            values = [math.nan if v is None else float(v) for v in values]  # None -> NaN, as TRL does
            scores[c.name] = values
            totals = [t + c.weight * v for t, v in zip(totals, values, strict=True)]
        self.last_components = scores
        return totals


def build_reward(
    spec: dict[str, Any] | str,
    *,
    stage_paths: dict[str, str] | None = None,
    base_dir: str | Path = ".",
    device: str | None = None,
    dtype: str = "float32",
) -> CompositeReward:
    """The reward ``spec`` describes (see the module docstring).

    stage_paths: artifact folder of each earlier stage, by name, for ``{"from": STAGE}``.
    base_dir: where relative paths (``path``, ``file.py:fn``) resolve; the pipeline file's folder.
    device, dtype: defaults for reward models (a model entry's kwargs may override them).
    """
    spec = check_spec(spec)
    entries = spec["sum"] if "sum" in spec else [spec]
    outer = spec.get("weight", 1.0) if "sum" in spec else 1.0
    components: list[Component] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"reward.sum[{i}]" if "sum" in spec else "reward"
        name, fn = _build_one(
            entry, where=where, stage_paths=stage_paths, base_dir=Path(base_dir), device=device, dtype=dtype
        )
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name}_{k}", k + 1
        names.add(unique)
        components.append(Component(unique, outer * entry.get("weight", 1.0), fn))
    return CompositeReward(components)


def check_spec(spec: dict[str, Any] | str, *, where: str = "reward") -> dict[str, Any]:
    """``spec`` checked and with string shorthand expanded; loads nothing. Raises RewardSpecError."""
    if isinstance(spec, str):
        spec = {"function": spec} if ":" in spec else {"path": spec}
    if not isinstance(spec, dict):
        raise RewardSpecError(
            f"{where}: expected a mapping such as {{from: reward}}, {{path: DIR}}, {{function: module:fn}} "
            f"or {{sum: [...]}}, got {type(spec).__name__}"
        )
    for key in spec:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"valid keys: {', '.join(KEYS)}"
            raise RewardSpecError(f"{where}.{key}: unknown key; {hint}")
    given = [k for k in SOURCES if spec.get(k) is not None]
    if len(given) != 1:
        raise RewardSpecError(
            f"{where}: give exactly one of from, path, function, sum (got: {', '.join(given) or 'none'}), "
            "e.g. {from: reward} or {function: reward_models.functions:exact_match}"
        )
    source = given[0]
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
        raise RewardSpecError(f"{where}.weight: must be a finite number (got {weight!r})")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise RewardSpecError(f"{where}.kwargs: must be a mapping of parameter: value (got {kwargs!r})")
    if not isinstance(spec.get("normalize", False), bool):
        raise RewardSpecError(f"{where}.normalize: must be true or false (got {spec['normalize']!r})")
    if spec.get("normalize") and source not in ("from", "path"):
        raise RewardSpecError(
            f"{where}.normalize: only a reward model (from or path) can be normalized; "
            "move normalize: true onto the model entry"
        )
    if source in ("from", "path", "function") and not isinstance(spec[source], str):
        raise RewardSpecError(f"{where}.{source}: must be a string (got {spec[source]!r})")
    if source in ("from", "path"):
        unknown = [k for k in kwargs if k not in MODEL_OPTIONS]
        if unknown:
            raise RewardSpecError(
                f"{where}.kwargs.{unknown[0]}: a reward model takes kwargs {', '.join(MODEL_OPTIONS)}"
            )
    if source == "sum":
        entries = spec["sum"]
        if not isinstance(entries, list) or not entries:
            raise RewardSpecError(f"{where}.sum: must be a non-empty list of rewards, each with a weight")
        if kwargs:
            raise RewardSpecError(f"{where}.kwargs: set kwargs on the entries of the sum, not on the sum")
        checked = []
        for i, entry in enumerate(entries):
            entry = check_spec(entry, where=f"{where}.sum[{i}]")
            if "sum" in entry:
                raise RewardSpecError(
                    f"{where}.sum[{i}]: a sum inside a sum; write one flat sum with the weights multiplied"
                )
            checked.append(entry)
        return {**spec, "sum": checked}
    return dict(spec)


def _build_one(
    entry: dict[str, Any],
    *,
    where: str,
    stage_paths: dict[str, str] | None,
    base_dir: Path,
    device: str | None,
    dtype: str,
) -> tuple[str, RewardFn]:
    """(name, reward function) of one checked, non-sum entry."""
    kwargs = entry.get("kwargs", {})
    if "function" in entry:
        try:
            fn = load_function(entry["function"], base_dir=base_dir)
        except RewardLoadError as e:
            raise RewardLoadError(f"{where}.function: {e}") from None
        name = _callable_name(fn)
        return name, _bind(fn, kwargs, where=where, name=name)

    from reward_models.model import RewardModel

    if "from" in entry:
        stage = entry["from"]
        if not stage_paths or stage not in stage_paths:
            known = ", ".join(sorted(stage_paths or {})) or "none"
            raise RewardSpecError(
                f"{where}.from: no earlier stage named '{stage}' has an artifact (stages: {known}); "
                "name a reward stage that runs before this one, or give path: DIR"
            )
        folder, name = Path(stage_paths[stage]), stage
    else:
        folder = Path(entry["path"]).expanduser()
        name = folder.name or "reward_model"
    folder = folder if folder.is_absolute() else base_dir / folder
    if not folder.is_dir():
        raise RewardSpecError(f"{where}: reward model folder {folder} does not exist")
    options = {"device": device, "dtype": dtype, **kwargs}
    model = RewardModel.from_pretrained(folder, normalize=entry.get("normalize", False), **options)
    return name, model


def _bind(fn: RewardFn, kwargs: dict[str, Any], *, where: str, name: str) -> RewardFn:
    """``functools.partial(fn, **kwargs)`` (fn itself without kwargs), after checking them.

    Each kwarg must name a parameter of fn (per-sample data comes from dataset fields, not YAML),
    and every keyword-only parameter without a default must be given.
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return functools.partial(fn, **kwargs) if kwargs else fn
    named = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("prompts", "completions")
    ]
    for key in kwargs:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f"did you mean {close[0]}?" if close else f"its parameters: {', '.join(named) or 'none'}"
            raise RewardSpecError(f"{where}.kwargs.{key}: {name} has no parameter '{key}'; {hint}")
    missing = [
        p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty and p.name not in kwargs
    ]
    if missing:
        raise RewardSpecError(
            f"{where}: {name} needs kwargs {', '.join(missing)}, e.g. kwargs: {{{missing[0]}: ...}}"
        )
    return functools.partial(fn, **kwargs) if kwargs else fn


def _callable_name(fn: Any) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)
