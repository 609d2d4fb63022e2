"""`rlft export`: merged adapters reproduce the adapted model's logits; prompt artifacts are kept as PEFT."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import QUICKSTART_DATA

from rlft.cli import main
from rlft.models.loading import ResolvedModel, load_causal_lm
from rlft.models.tiny import build_tiny_from_texts
from rlft.models.tuning import AdapterTuning, LoraTuning, PromptTuning, apply_tuning, save_model

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    texts = (QUICKSTART_DATA / "sft_train.jsonl").read_text().splitlines()[:300]
    return build_tiny_from_texts(
        texts, tmp_path_factory.mktemp("m") / "tiny", hidden_size=32, num_layers=2, num_heads=2
    )


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def adapted_stage(tiny: Path, folder: Path, tuning) -> torch.Tensor:
    """A stage folder as a peft method leaves it, with adapter weights moved off their no-op start.
    Returns the adapted model's logits, taken before saving."""
    from transformers import AutoTokenizer

    model = apply_tuning(load_causal_lm(ResolvedModel(str(tiny))), tuning)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # lora_B starts at 0, (IA)^3 at 1, a prompt at token embeddings: move them
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    expected = logits(model)
    save_model(model, AutoTokenizer.from_pretrained(tiny), folder)
    (folder / "stage.json").write_text('{"status": "done"}')  # what the runner adds: not exported
    (folder / "metrics.jsonl").write_text("")
    return expected


@pytest.mark.parametrize(
    "tuning",
    [LoraTuning(r=4, dropout=0.0), LoraTuning(method="dora", r=4, dropout=0.0), AdapterTuning()],
    ids=["lora", "dora", "adapter"],
)
def test_export_merge_reproduces_the_adapted_logits(tmp_path, tiny, tuning):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = adapted_stage(tiny, tmp_path / "stage", tuning)
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out")]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # transformers alone: no peft, no rlft
    assert (logits(exported) - expected).abs().max().item() < 1e-5
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "adapter" not in names and "stage.json" not in names and "metrics.jsonl" not in names
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template

    # The PEFT folder alone, merged onto the base it names, gives the same model.
    assert (
        main(["export", str(tmp_path / "stage" / "adapter"), "--merge", "--out", str(tmp_path / "out2")]) == 0
    )
    assert (
        logits(AutoModelForCausalLM.from_pretrained(tmp_path / "out2")) - expected
    ).abs().max().item() < 1e-5


def test_prompt_tuning_cannot_merge_and_exports_as_peft(tmp_path, tiny, capsys):
    from peft import AutoPeftModelForCausalLM

    expected = adapted_stage(tiny, tmp_path / "stage", PromptTuning(num_virtual_tokens=3))
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "prompt_tuning" in err and "cannot be merged" in err and "without --merge" in err
    assert not (tmp_path / "out").exists()

    assert main(["export", str(tmp_path / "stage"), "--out", str(tmp_path / "out")]) == 0
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "out").resolve())
    with_prompt = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out" / "adapter")
    assert torch.allclose(logits(with_prompt), expected, atol=1e-5)


def test_export_errors_say_what_to_do(tmp_path, tiny, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    assert main(["export", str(tiny), "--merge", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--merge", "--out", str(tmp_path / "o")]) == 2
    assert "neither a model folder" in capsys.readouterr().err


def test_export_help_explains_merge():
    out = subprocess.run(
        [sys.executable, "-m", "rlft", "export", "--help"], check=True, capture_output=True, text=True
    ).stdout
    assert "--merge" in out and "AutoModelForCausalLM.from_pretrained" in out and "Prompt and prefix" in out


@pytest.mark.slow
def test_pipeline_stage_records_parameters_and_peak_memory_then_exports(tmp_path):
    """End to end: `rlft run` with LoRA, stage.json's parameters and peak memory, then `rlft export --merge`."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        textwrap.dedent(f"""
        name: t
        model:
          tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{QUICKSTART_DATA}/sft_train.jsonl]}}
        stages:
          - name: sft
            kind: sft
            data: {{train: {QUICKSTART_DATA}/sft_train.jsonl, max_rows: 64}}
            tuning: {{method: lora, r: 4, dropout: 0.0}}
            trainer: {{max_steps: 4, learning_rate: 1.0e-2}}
        """)
    )
    assert main(["run", str(pipeline), "--run-dir", str(tmp_path / "run")]) == 0
    record = json.loads((tmp_path / "run" / "sft" / "stage.json").read_text())
    assert record["info"]["peak_memory"]["rss_mib"] > 100
    params = record["info"]["parameters"]
    assert 0 < params["trainable"] < params["total"]
    assert record["info"]["saved"] == {"merged": True, "adapter": "adapter/", "peft": "lora"}
    assert "peak memory: RSS" in (tmp_path / "run" / "sft" / "stage.log").read_text()

    assert main(["export", str(tmp_path / "run" / "sft"), "--merge", "--out", str(tmp_path / "out")]) == 0
    # runs/.../models/ holds the tiny model's folder and its build lock (.tiny-*.lock): take the folder
    (base_dir,) = [p for p in (tmp_path / "run" / "models").iterdir() if p.is_dir()]
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    adapted = PeftModel.from_pretrained(base, tmp_path / "run" / "sft" / "adapter")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert (logits(exported) - logits(adapted)).abs().max().item() < 1e-5
