"""Security by default (DESIGN.md decision 13): no remote code unless asked (and then logged), weights
from safetensors only unless allow_pickle, YAML read safely, and secrets never written to disk."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from conftest import REPO

from rlft.cli import main
from rlft.config import ModelSource
from rlft.errors import ConfigError
from rlft.models.loading import ResolvedModel, load_causal_lm, model_folder_problem, resolve_source


def test_trust_remote_code_is_off_unless_set_and_logged_when_set(tmp_path, caplog):
    resolved = resolve_source(
        ModelSource(hub="org/model"), model_paths={}, run_dir=tmp_path, base_dir=tmp_path
    )
    assert resolved.kwargs["trust_remote_code"] is False
    with caplog.at_level(logging.WARNING, logger="rlft"):
        source = ModelSource(hub="org/model", trust_remote_code=True)
        resolved = resolve_source(
            source, model_paths={}, run_dir=tmp_path, base_dir=tmp_path, key="stages[0].model"
        )
    assert resolved.kwargs["trust_remote_code"] is True
    assert (
        "stages[0].model.trust_remote_code is on: org/model may run its own Python code when loaded"
        in caplog.text
    )


@pytest.fixture
def pickled_model(tmp_path) -> Path:
    """A tiny Llama saved as pytorch_model.bin only."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    )
    import torch

    folder = tmp_path / "pickled"
    config.save_pretrained(folder)  # transformers 5 saves safetensors only: write the pickle by hand
    torch.save(LlamaForCausalLM(config).state_dict(), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickled_weights_are_refused_unless_allowed(pickled_model):
    assert "holds its weights only as pickle (pytorch_model.bin)" in model_folder_problem(
        pickled_model, needs_tokenizer=False
    )
    assert model_folder_problem(pickled_model, allow_pickle=True, needs_tokenizer=False) is None
    with pytest.raises(ConfigError, match=r"weights load from safetensors only, unless allow_pickle: true"):
        load_causal_lm(ResolvedModel(str(pickled_model), description="pickled"))
    model = load_causal_lm(ResolvedModel(str(pickled_model), description="pickled", allow_pickle=True))
    assert model.config.hidden_size == 8


def test_yaml_is_read_safely_and_torch_load_with_weights_only():
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load)\(|Loader=yaml\.(Loader|FullLoader|UnsafeLoader)")
    for package in ("rlft", "reward_models"):
        for f in (REPO / package).rglob("*.py"):
            text = f.read_text()
            for line in text.splitlines():
                if unsafe.search(line):
                    # the one exception: rlft.yamlio's loader, a subclass of yaml.SafeLoader
                    assert f.name == "yamlio.py" and "Loader=SafeLoader" in line, f"{f}: {line.strip()}"
                if (
                    "torch.load(" in line
                    and not line.lstrip().startswith(("#", "`"))
                    and "weights_only=True" not in line
                ):
                    raise AssertionError(f"{f}: torch.load without weights_only=True: {line.strip()}")

    import yaml

    from rlft import yamlio

    assert issubclass(yamlio.SafeLoader, yaml.SafeLoader)
    with pytest.raises(yaml.constructor.ConstructorError):
        yamlio.safe_load("!!python/object/apply:os.system ['echo hi']")
    assert yamlio.safe_load("lr: 3e-4\nname: 1e\nsteps: 1_000") == {"lr": 3e-4, "name": "1e", "steps": 1000}


SECRETS = {
    "WANDB_API_KEY": "wandbsecret0123456789abcdef0123456789abcdef",
    "HF_TOKEN": "hf_secretTOKENvalue987654321",
    "MY_SECRET_TOKEN": "my-secret-token-value-42",
}


def test_secrets_never_written(tmp_path, write_pipeline, monkeypatch, capsys):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B writes its files, never reaches the network
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    pipeline = write_pipeline(sft_trainer="{max_steps: 2, logging_steps: 1}")
    assert main(["run", str(pipeline), "--run-dir", str(tmp_path / "run")]) == 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "stage.json" for p in written) and any(p.name == "metrics.jsonl" for p in written)
    for path in written:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path}"
    out = capsys.readouterr()
    for value in SECRETS.values():
        assert value not in out.out + out.err
