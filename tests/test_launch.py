"""Every shipped launch config parses, resolves by name, and passes `rlft validate` in a pipeline."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import REPO as REPO_ROOT

from rlft.cli import main
from rlft.errors import ConfigError
from rlft.resources import find_launch_config, resolved_launch_config

CONFIGS = sorted((REPO_ROOT / "launch").glob("**/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_launch_config_parses(config):
    data = yaml.safe_load(config.read_text())
    assert data["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert data["num_processes"] >= 1
    ds = (data.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if ds:
        settings = json.loads((config.parent / ds).read_text())
        assert settings["train_micro_batch_size_per_gpu"] == "auto"  # the trainer fills it
        assert "train_batch_size" not in settings  # it would assert against the trainer's value


@pytest.mark.parametrize("name", ["cpu_2proc", "zero3", "zero3_offload", "fsdp", "multi_gpu", "single_gpu"])
def test_shipped_names_resolve_and_validate(name, tmp_path):
    assert find_launch_config(name, base_dir=tmp_path) == REPO_ROOT / "launch" / f"{name}.yaml"
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"name: x\nmodel: org/model\nlaunch: {name}\nstages:\n  - {{name: sft, kind: sft, data: {{train: t.jsonl}}}}\n"
    )
    assert main(["validate", str(pipeline)]) == 0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_quickstart_validates_with_every_shipped_launch_config(config):
    """No launch rule (rlft/launch_rules.py) refuses a shipped config with the quickstart's stages."""
    assert main(["validate", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--launch", str(config)]) == 0


def test_unknown_launch_config_lists_the_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="no such accelerate config.*shipped: cpu, cpu_2proc"):
        find_launch_config("zero4", base_dir=tmp_path)


def test_deepspeed_json_path_made_absolute(tmp_path):
    out = resolved_launch_config(REPO_ROOT / "launch" / "zero2.yaml", tmp_path / "launch.yaml")
    path = Path(yaml.safe_load(out.read_text())["deepspeed_config"]["deepspeed_config_file"])
    assert path.is_absolute() and path == REPO_ROOT / "launch" / "deepspeed" / "zero2.json"
