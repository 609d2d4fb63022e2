"""The Python API (rlft/api.py): `rlft.Pipeline`, `rlft.load_run`, the stage classes, and README's example."""

import re
import subprocess
import sys

import pytest
from conftest import QUICKSTART_DATA, REPO

import rlft
from rlft.errors import ConfigError, RlftError


def pipeline_dict(**top):
    return {
        "name": "api",
        "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2}},
        "stages": [
            {"name": "sft", "kind": "sft", "data": {"train": str(QUICKSTART_DATA / "sft_train.jsonl")}}
        ],
        **top,
    }


def test_import_rlft_is_light_and_exports_lazily():
    code = (
        "import sys, rlft; assert 'rlft.api' not in sys.modules and 'pydantic' not in sys.modules; "
        "from rlft.stages.sft import SFTStage; assert rlft.SFTStage is SFTStage; "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        rlft.Nope  # noqa: B018


def test_stage_classes_have_distinct_names_and_their_kind():
    names = {"SFTStage": "sft", "RewardStage": "reward", "DPOStage": "dpo", "KTOStage": "kto"}
    names |= {"PPOStage": "ppo", "GRPOStage": "grpo", "RLOOStage": "rloo", "EvaluateStage": "evaluate"}
    names |= {"ContrastiveStage": "contrastive", "GenerateStage": "generate"}
    for name, kind in names.items():
        cls = getattr(rlft, name)
        assert cls.__name__ == name and cls.model_fields["kind"].default == kind


def test_from_yaml_with_overrides_as_strings_or_a_dict(tmp_path):
    shipped = rlft.Pipeline.from_yaml("quickstart", overrides=["stages.sft.trainer.max_steps=7"])
    assert shipped.name == "quickstart"
    assert [s.name for s in shipped.stages] == ["base", "sft", "reward", "dpo", "ppo"]
    assert (
        next(s for s in shipped.stages if s.name == "sft").trainer["max_steps"] == 7
    )  # parsed as YAML: a number
    again = rlft.Pipeline.from_yaml(REPO / "configs" / "quickstart.yaml", overrides={"stages.dpo.beta": 0.3})
    assert next(s for s in again.stages if s.name == "dpo").beta == 0.3
    with pytest.raises(ConfigError, match="write KEY=VALUE"):
        rlft.Pipeline.from_yaml("quickstart", overrides=["max_steps"])
    with pytest.raises(ConfigError, match="nor one rlft ships.*quickstart"):
        rlft.Pipeline.from_yaml("quickstrat")


def test_from_dict_resolves_paths_against_base_dir_and_takes_stage_objects(tmp_path):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    sft = rlft.SFTStage(name="sft", data={"train": "rows.jsonl"}, trainer={"max_steps": 3})
    pipeline = rlft.Pipeline.from_dict(
        {"name": "d", "model": "org/model", "stages": [sft]}, base_dir=tmp_path
    )
    stage = pipeline.stages[0]
    assert (
        stage.model.hub == "org/model"
    )  # the pipeline's default model still applies: only set keys were used
    assert stage.trainer == {"max_steps": 3}
    assert repr(pipeline) == "Pipeline('d': sft (sft))"
    with pytest.raises(ConfigError, match=r"pipeline: stages\[0\].data.train: .*rows.jsonl"):
        rlft.Pipeline.from_dict(
            {"name": "d", "model": "org/model", "stages": [sft]}, base_dir=tmp_path / "elsewhere"
        )
    with pytest.raises(
        ConfigError, match=r"stages\[0\].trainer.learning_rte: unknown key.*did you mean learning_rate"
    ):
        rlft.Pipeline.from_dict(
            pipeline_dict(stages=[{**pipeline_dict()["stages"][0], "trainer": {"learning_rte": 1}}])
        )
    with pytest.raises(RlftError, match="a pipeline is a dict"):
        rlft.Pipeline.from_dict(["not", "a", "dict"])


def test_validate_applies_the_launch_rules():
    pipeline = rlft.Pipeline.from_dict(
        pipeline_dict(stages=[{**pipeline_dict()["stages"][0], "tuning": {"method": "prompt_tuning"}}])
    )
    assert pipeline.validate(launch="cpu_2proc") is pipeline
    with pytest.raises(ConfigError, match="prompt_learning_under_zero3"):
        pipeline.validate(launch="cpu_2proc_zero3")


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RlftError, match="no summary.json here"):
        rlft.load_run(tmp_path)


def readme_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    """README's Python API example, as written, from an empty folder (the quickstart by its shipped name)."""
    monkeypatch.chdir(tmp_path)
    out = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[('base', 'not run'), ('sft', 'ran'), ('reward', 'not run')" in out.stdout
    assert "Pipeline('mine': sft (sft))" in out.stdout
    run = rlft.load_run(tmp_path / "runs" / "api-demo")
    assert list(run.stages) == ["sft"] and run.stages["sft"]["metrics"]["train/global_step"] == 60
    metrics = run.metrics()
    assert set(metrics["stage"]) == {"sft"} and metrics["train/loss"].notna().any()
    losses = metrics["train/loss"].dropna()
    assert losses.iloc[-1] < losses.iloc[0]  # it trained
