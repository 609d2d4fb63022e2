"""The config reference (rlft/config_reference.py): every config key has a description, `rlft config
show` lists them, and the shipped JSON Schema is current and accepts every shipped pipeline file."""

import json
import os
import re
import typing
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import REPO
from pydantic import BaseModel

from rlft.cli import main
from rlft.config import PipelineConfig
from rlft.config_reference import (
    FieldDoc,
    config_class,
    field_docs,
    pipeline_schema,
    pipeline_schema_text,
    type_name,
)
from rlft.errors import ConfigError
from rlft.stages import STAGES, stage_config_class

SCHEMA = REPO / "configs" / "rlft.schema.json"


def reachable_models() -> list[type[BaseModel]]:
    """Every config model a pipeline file can reach: PipelineConfig, each kind's, and all nested in them."""

    def inner(annotation: typing.Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in inner(arg)]

    todo = [PipelineConfig, *(stage_config_class(kind) for kind in STAGES)]
    found: list[type[BaseModel]] = []
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        todo += [m for f in model.model_fields.values() for m in inner(f.annotation)]
    return found


def test_every_config_field_has_a_description():
    models = reachable_models()
    names = {m.__name__ for m in models}
    assert {"PPOStage", "AdaptiveKL", "LoraTuning", "CurateConfig", "NearDedupConfig"} <= names
    assert {"DataSource", "RewardSpec", "TinySpec", "TrackingConfig", "EvaluateConfig"} <= names
    missing = [
        f"{m.__module__}.{m.__name__}.{name}"
        for m in models
        for name, f in m.model_fields.items()
        if not (f.description or "").strip()
    ]
    assert not missing, "give these fields Field(description=...): " + ", ".join(missing)


def test_field_docs_flatten_nested_models_with_dots():
    docs = {(d.key, d.when): d for d in field_docs(config_class("dpo"))}
    dedup = docs[("data.curate.dedup", "")]
    assert (dedup.type, dedup.default) == ("bool", "false")
    assert "drop rows equal to an earlier one" in dedup.description
    assert docs[("beta", "")] == FieldDoc(
        "beta", "float", "0.1", "KL strength: higher keeps the policy closer to the reference"
    )
    assert docs[("model.from", "")].type == "str | None"  # the alias, as YAML writes it
    assert docs[("data.train", "")].default == "required"
    assert docs[("tuning", "")].default == "{method: full}"
    assert docs[("data.decontaminate", "")].default == "{}"  # the model's own defaults
    assert docs[("loss_type", "")].default == "[sigmoid]"


def test_field_docs_list_tuning_per_method():
    docs = field_docs(config_class("sft"))
    lora = [d.key for d in docs if d.when == "method: lora | dora"]
    assert lora[:3] == ["tuning.method", "tuning.r", "tuning.alpha"]
    assert [d.key for d in docs if d.when == "method: prompt_tuning"] == [
        "tuning.method",
        "tuning.num_virtual_tokens",
        "tuning.init_text",
    ]
    assert {d.when for d in docs if d.key == "tuning.target_modules"} == {
        "method: lora | dora",
        "method: adapter",
    }


def test_a_model_met_again_is_not_expanded_twice():
    docs = field_docs(config_class("ppo"))
    reference = next(d for d in docs if d.key == "reference")
    assert reference.same_as == "model"
    assert not [d for d in docs if d.key.startswith(("reference.", "critic.", "data.eval."))]
    assert next(d for d in docs if d.key == "reward.sum").same_as == "reward"  # recursive RewardSpec
    assert "adaptive_kl.horizon" in {d.key for d in docs}


def test_type_names():
    fields = config_class("ppo").model_fields
    assert type_name(fields["kl_estimator"].annotation) == "k1 | k3 | abs | mse"
    assert type_name(fields["steps"].annotation) == "int | None"
    assert type_name(fields["reward"].annotation) == "RewardSpec"


def test_unknown_kind_is_a_config_error_with_did_you_mean():
    with pytest.raises(ConfigError, match=re.escape("unknown kind 'dpoo'; did you mean dpo?")):
        config_class("dpoo")
    with pytest.raises(ConfigError, match="kinds: sft, reward, dpo"):
        config_class("nothing-like-it")


# ---------------------------------------------------------------------------------------------
# JSON Schema
# ---------------------------------------------------------------------------------------------


def test_shipped_schema_is_what_rlft_config_schema_writes(tmp_path):
    out = tmp_path / "schema.json"
    assert main(["config", "schema", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == pipeline_schema_text()
    assert SCHEMA.read_text(encoding="utf-8") == out.read_text(encoding="utf-8"), (
        "configs/rlft.schema.json is stale: rlft config schema --out configs/rlft.schema.json"
    )


def test_rlft_config_schema_prints_it(capsys):
    assert main(["config", "schema"]) == 0
    assert json.loads(capsys.readouterr().out) == pipeline_schema()


def test_schema_is_draft_2020_12_with_stages_by_kind():
    schema = pipeline_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    items = schema["properties"]["stages"]["items"]
    assert items["discriminator"]["mapping"] == {
        kind: f"#/$defs/{stage_config_class(kind).__name__}" for kind in STAGES
    }
    dpo = schema["$defs"]["DPOStage"]
    assert dpo["properties"]["kind"]["const"] == "dpo"
    assert "kind" in dpo["required"]
    assert "KL strength" in dpo["properties"]["beta"]["description"]


def shipped_yamls() -> list[Path]:
    found = sorted((REPO / "configs").rglob("*.yaml"))
    assert found, "no YAML files under configs/"
    return found


@pytest.mark.parametrize("path", shipped_yamls(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_yaml_points_at_the_schema_and_validates(path):
    first = path.read_text().splitlines()[0]
    relative = Path(os.path.relpath(SCHEMA, path.parent)).as_posix()
    assert first == f"# yaml-language-server: $schema={relative}"
    jsonschema.validate(yaml.safe_load(path.read_text()), pipeline_schema())


def pipeline(**stage):
    return {"name": "p", "stages": [{"name": "s", "kind": "sft", "data": {"train": "t.jsonl"}, **stage}]}


def errors(document):
    return list(jsonschema.Draft202012Validator(pipeline_schema()).iter_errors(document))


def test_schema_rejects_unknown_keys_and_kinds():
    assert errors(pipeline()) == []
    assert errors(pipeline(lerning_rate=1e-4))  # an unknown stage key
    assert errors(pipeline(kind="spf"))
    assert errors(pipeline(tuning={"method": "lora", "rank": 8}))
    assert errors({**pipeline(), "stagez": []})
    no_kind = pipeline()
    del no_kind["stages"][0]["kind"]
    assert errors(no_kind)


def test_schema_accepts_the_shorthands_the_validators_take():
    assert errors(pipeline(model="HuggingFaceTB/SmolLM2-135M-Instruct")) == []
    assert (
        errors(pipeline(data={"train": "t.jsonl", "curate": {"near_dedup": True}, "decontaminate": False}))
        == []
    )
    dpo = {"name": "d", "kind": "dpo", "data": {"train": ["a.jsonl", {"path": "b.jsonl", "weight": 1}]}}
    assert errors({"name": "p", "stages": [{**dpo, "loss_type": "ipo"}]}) == []
    grpo = {"name": "g", "kind": "grpo", "data": {"train": "t.jsonl"}, "reward": "reward_models.tasks:fn"}
    assert errors({"name": "p", "stages": [grpo]}) == []
    assert errors({"name": "p", "stages": [{**grpo, "reward": {"sum": [{"from": "rm"}, "m:f"]}}]}) == []
