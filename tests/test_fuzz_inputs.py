"""Fuzzing the input boundary: whatever a user writes, the pipeline loader gives a pipeline or a
ConfigError, the row checks give a verdict, and the data loader gives data or a DataError: never
another exception (a traceback the user cannot act on)."""

from __future__ import annotations

import copy
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_bad_inputs import BASE  # noqa: E402

from rlft.data.config import DataConfig  # noqa: E402
from rlft.data.formats import CONVERSATIONAL, FORMATS, STANDARD, Detected, check_row  # noqa: E402
from rlft.data.stage import load_stage_data  # noqa: E402
from rlft.errors import ConfigError, DataError  # noqa: E402
from rlft.pipeline_file import load_pipeline, pipeline_from_dict  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))

KEYS = ["name", "kind", "model", "stages", "trainer", "data", "train", "eval", "learning_rate", "max_steps"]
KEYS += ["launch", "seed", "tiny", "path", "from", "reward", "function", "evaluate", "tuning", "method"]
KEYS += ["on_invalid", "fields", "beta", "sum", "weight", "tracking", "hub", "subfolder", "allow_pickle"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["sft", "dpo", "ppo", "grpo", "reward", "-1", "3e-4", "nomodule:fn", "./x", "zero3"])
)
keys = st.sampled_from(KEYS) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


def _set_path(raw: dict, path: list[str | int], value) -> None:
    """Put `value` at `path` in `raw`, following (or creating) mappings; list indices pick a stage."""
    node = raw
    for part in path[:-1]:
        if isinstance(node, list):
            if not node:
                return
            node = node[part % len(node) if isinstance(part, int) else 0]
            continue
        if not isinstance(node, dict):
            return
        node = node.setdefault(part, {}) if not isinstance(node.get(part), list | dict) else node[part]
    if isinstance(node, dict):
        node[path[-1]] = value


paths = st.lists(st.sampled_from(KEYS) | st.integers(0, 3), min_size=1, max_size=4).filter(
    lambda p: isinstance(p[-1], str)
)


@FUZZ
@given(changes=st.lists(st.tuples(paths, values), min_size=1, max_size=3))
def test_config_loader_gives_a_pipeline_or_a_config_error(changes, tmp_path_factory):
    raw = copy.deepcopy(BASE)
    for path, value in changes:
        _set_path(raw, path, value)
    try:
        pipeline_from_dict(raw, base_dir=tmp_path_factory.getbasetemp())
    except ConfigError:
        pass


@FUZZ
@given(raw=values)
def test_config_loader_takes_any_structure(raw, tmp_path_factory):
    try:
        pipeline_from_dict(
            raw if isinstance(raw, dict) else {"stages": raw}, base_dir=tmp_path_factory.getbasetemp()
        )
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    text=st.text(max_size=200) | st.sampled_from(["name: x\nstages: [", "a: b: c", "- 1", "{", "stages: 3"])
)
def test_pipeline_file_of_any_text_gives_a_pipeline_or_a_config_error(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "pipeline.yaml"
    path.write_bytes(text.encode("utf-8", errors="replace"))
    try:
        load_pipeline(path)
    except ConfigError:
        pass


message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "tool", "bot"]) | scalars,
        "content": scalars | st.lists(scalars, max_size=2),
    },
)
field_values = scalars | st.lists(message | scalars, max_size=4)
DETECTED = [Detected(name, fields) for name, sets in FORMATS.items() for fields in sets]


@FUZZ
@given(
    detected=st.sampled_from(DETECTED),
    style=st.sampled_from([STANDARD, CONVERSATIONAL]),
    row=st.dictionaries(
        st.sampled_from(
            [
                "text",
                "messages",
                "prompt",
                "completion",
                "chosen",
                "rejected",
                "label",
                "margin",
                "anchor",
                "positive",
                "negative",
            ]
        ),
        field_values,
        max_size=8,
    ),
)
def test_row_checks_give_a_verdict(detected, style, row):
    row = {f: row.get(f) for f in detected.fields} | {k: v for k, v in row.items() if k == "margin"}
    problem = check_row(row, detected, style=style)
    assert problem is None or (isinstance(problem[0], str) and isinstance(problem[1], str) and problem[1])


json_row = st.dictionaries(
    st.sampled_from(["prompt", "chosen", "rejected", "margin", "extra"]), field_values, max_size=5
)
line = (
    json_row.map(json.dumps)
    | st.binary(max_size=40).map(lambda b: b.decode("latin-1"))
    | st.text(max_size=30)
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(lines=st.lists(line, min_size=1, max_size=6), on_invalid=st.sampled_from(["skip", "error"]))
def test_data_loader_gives_data_or_a_data_error(lines, on_invalid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("d")
    (folder / "p.jsonl").write_bytes("\n".join(lines).encode("utf-8", errors="replace") + b"\n")
    cfg = DataConfig(train="p.jsonl", on_invalid=on_invalid)
    try:
        data = load_stage_data(
            cfg, formats=("preference",), base_dir=folder, rejects_path=folder / "rejects.jsonl"
        )
    except DataError:
        return
    assert len(data.train) >= 1
