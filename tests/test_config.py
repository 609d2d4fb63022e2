"""Pipeline config: strict keys, key paths in errors, did-you-mean, stage references, trainer keys."""

import textwrap
from pathlib import Path

import pytest

from rlft.config import ModelSource
from rlft.errors import ConfigError
from rlft.pipeline_file import load_pipeline

GOOD = """
name: demo
model: {tiny: {hidden_size: 32, num_layers: 1}}
stages:
  - name: sft
    kind: sft
    data: {train: train.jsonl}
    trainer: {learning_rate: 1.0e-3, max_steps: 3}
  - name: sft2
    kind: sft
    model: {from: sft}
    data: {train: train.jsonl}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_pipeline(write(tmp_path, text))
    return str(e.value)


def test_good_pipeline_loads_with_defaults_inherited(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD))
    assert [s.name for s in p.stages] == ["sft", "sft2"]
    assert (p.stages[0].model.tiny.hidden_size, p.stages[0].model.tiny.num_layers) == (32, 1)  # inherited
    assert p.stages[1].model.from_ == "sft"
    assert p.stages[0].trainer["max_steps"] == 3
    assert p.base_dir == tmp_path.resolve()


def test_unknown_trainer_key_names_path_and_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("learning_rate", "learning_rte"))
    assert "stages[0].trainer.learning_rte: unknown key for SFTConfig; did you mean learning_rate?" in msg


def test_unknown_stage_key_suggests_closest(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("trainer: {learning_rate", "trainr: {learning_rate"))
    assert "stages[0].trainr: unknown key; did you mean trainer?" in msg


def test_unknown_nested_key_in_tuning(tmp_path):
    text = GOOD.replace(
        "    trainer: {learning_rate: 1.0e-3, max_steps: 3}", "    tuning: {method: lora, rank: 8}"
    )
    msg = error_of(tmp_path, text)
    assert "stages[0].tuning.lora.rank" in msg or "stages[0].tuning.rank" in msg
    assert "unknown key" in msg


def test_unknown_top_level_key(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("name: demo", "name: demo\nstagez: []"))
    assert "stagez: unknown key; did you mean stages?" in msg


def test_wrong_type_names_path_and_value(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("name: sft2", "name: sft2\n    seed: lots"))
    assert "stages[1].seed:" in msg and "'lots'" in msg


def test_from_must_name_an_earlier_stage(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("{from: sft}", "{from: sfft}"))
    assert "stages[1].model.from: 'sfft' is not an earlier stage" in msg
    assert "did you mean sft?" in msg


def test_from_a_later_stage_says_so(tmp_path):
    text = GOOD.replace(
        "    kind: sft\n    data: {train: train.jsonl}\n    trainer",
        "    kind: sft\n    model: {from: sft2}\n    data: {train: train.jsonl}\n    trainer",
    )
    msg = error_of(tmp_path, text)
    assert "stages[0].model.from: 'sft2' is not an earlier stage; it comes later" in msg


def test_unknown_kind_suggests(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("kind: sft\n    model", "kind: sfy\n    model"))
    assert "stages[1].kind: unknown kind 'sfy'; did you mean sft?" in msg


def test_duplicate_stage_names(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("name: sft2", "name: sft"))
    assert "stages[1].name: 'sft' is used by an earlier stage" in msg


def test_missing_pipeline_file(tmp_path):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_pipeline(tmp_path / "nope.yaml")


def test_missing_data_file_names_key_and_path(tmp_path):
    msg = error_of(
        tmp_path,
        GOOD.replace(
            "name: sft2\n    kind: sft\n    model: {from: sft}\n    data: {train: train.jsonl}",
            "name: sft2\n    kind: sft\n    model: {from: sft}\n    data: {train: nope.jsonl}",
        ),
    )
    assert "stages[1].data.train:" in msg and str(tmp_path / "nope.jsonl") in msg and "does not exist" in msg


def test_missing_evaluate_prompts(tmp_path):
    msg = error_of(
        tmp_path, GOOD + "evaluate: {prompts: gone.jsonl, reward: reward_models.tasks:uppercase_copy}\n"
    )
    assert "evaluate.prompts:" in msg and "gone.jsonl does not exist" in msg


def test_missing_required_key(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("    data: {train: train.jsonl}\n    trainer", "    trainer"))
    assert "stages[0].data: missing" in msg


def test_model_source_needs_exactly_one(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("{from: sft}", "{from: sft, hub: gpt2}"))
    assert "stages[1].model" in msg and "exactly one of" in msg


def test_model_source_shorthand():
    assert ModelSource.model_validate("HuggingFaceTB/SmolLM2-135M").hub == "HuggingFaceTB/SmolLM2-135M"
    assert ModelSource.model_validate("./models/mine").path == "./models/mine"


def test_tiny_spec_is_checked(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("hidden_size: 32", "hidden_sise: 32"))
    assert "model.tiny.hidden_sise: unknown key; did you mean hidden_size?" in msg


def test_overrides_address_stages_by_name(tmp_path):
    p = load_pipeline(write(tmp_path, GOOD), overrides={"stages.sft.trainer.max_steps": 7, "seed": 3})
    assert p.stages[0].trainer["max_steps"] == 7
    assert p.stages[0].seed == 3


def test_evaluate_adds_a_base_stage_first(tmp_path):
    text = GOOD + "evaluate: {prompts: train.jsonl, reward: reward_models.tasks:uppercase_copy}\n"
    p = load_pipeline(write(tmp_path, text))
    assert [s.name for s in p.stages] == ["base", "sft", "sft2"]
    assert p.stages[0].kind == "evaluate" and p.stages[0].model.tiny is not None


def test_stage_without_any_model(tmp_path):
    msg = error_of(tmp_path, GOOD.replace("model: {tiny: {hidden_size: 32, num_layers: 1}}\n", ""))
    assert "stages[0].model: missing" in msg


def test_every_shipped_config_validates():
    from rlft.cli import main

    configs = sorted(Path(__file__).resolve().parent.parent.glob("configs/**/*.yaml"))
    pipelines = [c for c in configs if "stages:" in c.read_text()]
    assert pipelines, "no pipeline files under configs/"
    assert main(["validate", *map(str, pipelines)]) == 0
