"""`rlft export`: merged adapters reproduce the adapted model's logits; prompt artifacts are kept as PEFT."""

import json
import shutil
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


# --- What an export holds: model files only, a model card, a generation config; the merge check ---

RECORD_NAMES = {
    "stage.json",
    "metrics.jsonl",
    "stage.log",
    "data_report.json",
    "data_lengths.png",
    "rejects.jsonl",
    "ppo_samples.jsonl",  # a record no list of records named: the allow-list leaves it out anyway
    "wandb",
    "tensorboard",
    "ranks",
}


def add_records(folder: Path) -> None:
    """What a finished stage holds beside its model: rlft's records, a W&B offline run, TensorBoard, ranks/."""
    for name in ("metrics.jsonl", "stage.log", "data_report.json", "data_lengths.png", "rejects.jsonl"):
        (folder / name).write_text("x")
    (folder / "ppo_samples.jsonl").write_text("{}\n")
    (folder / "wandb" / "offline-run-1").mkdir(parents=True)
    (folder / "wandb" / "offline-run-1" / "run-1.wandb").write_text("config and machine details")
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out.tfevents.1").write_text("x")
    (folder / "ranks").mkdir()
    (folder / "ranks" / "rank-0.json").write_text("{}")


def write_record(folder: Path, **record) -> None:
    (folder / "stage.json").write_text(json.dumps({"status": "done", **record}))


def front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n"), card[:80]
    return yaml.safe_load(card.split("---\n")[1])


@pytest.fixture
def run_dir(tmp_path, tiny) -> tuple[Path, torch.Tensor]:
    """A run folder as `rlft run` leaves it: sft (LoRA on the tiny model) -> dpo (LoRA from sft), each
    with its stage.json and records. Returns the folder and the dpo model's logits."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.yaml").write_text("name: demo\n")
    adapted_stage(tiny, run / "sft", LoraTuning(r=4, dropout=0.0))
    write_record(
        run / "sft",
        stage="sft",
        kind="sft",
        config={
            "model": {"from": None, "tiny": {"hidden_size": 32, "num_layers": 2}},
            "tuning": {"method": "lora"},
        },
        inputs={"model": f"tiny:{tiny.name}", "data": {str(QUICKSTART_DATA / "sft_train.jsonl"): "a" * 64}},
        metrics={"train/loss": 0.0725, "task_reward": 0.455},
        artifact_hash="h-sft",
        seconds=19.5,
    )
    expected = adapted_stage(run / "sft", run / "dpo", LoraTuning(r=4, dropout=0.0))
    write_record(
        run / "dpo",
        stage="dpo",
        kind="dpo",
        config={"model": {"from": "sft"}, "tuning": {"method": "lora"}},
        inputs={
            "model": "h-sft",
            "data": {str(QUICKSTART_DATA / "prefs_train.jsonl"): "b" * 64},
            "evaluate": {str(QUICKSTART_DATA / "heldout_prompts.jsonl"): "c" * 64},
        },
        metrics={"train/loss": 0.115, "rewards/margins": 5.77, "task_reward": 1.0},
        artifact_hash="h-dpo",
        seconds=11.4,
    )
    for stage in ("sft", "dpo"):
        add_records(run / stage)
    return run, expected


def test_export_of_a_run_stage_holds_the_model_a_card_and_no_records(tmp_path, run_dir, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run, expected = run_dir
    assert main(["export", str(run / "dpo"), "--merge", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert not names & RECORD_NAMES and "adapter" not in names
    assert {"config.json", "model.safetensors", "generation_config.json", "README.md"} <= names
    assert "left out of" in out and "wandb/" in out and "ppo_samples.jsonl" in out
    assert "merge check passed" in out  # against run/sft + adapter/: the base the adapter names

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # transformers alone
    assert (logits(exported) - expected).abs().max().item() < 1e-5
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    generation = GenerationConfig.from_pretrained(tmp_path / "out")
    assert (generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )

    card = (tmp_path / "out" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["rlft", "dpo", "lora"]
    assert meta["datasets"] == ["a" * 64, "b" * 64]  # sft's data, then dpo's
    assert "base_model" not in meta  # a tiny model is not on the Hub
    assert card.index("| 1 | sft | sft | lora |") < card.index("| 2 | dpo | dpo | lora | stage `sft` |")
    assert "# demo/dpo" in card and "| task_reward | 1 |" in card and "| rewards/margins | 5.77 |" in card
    assert "| 0.455 |" in card  # sft's task reward, in the lineage
    assert "merge check passed" in card and "Intended use and limits" in card
    assert str(tmp_path) not in card

    # Without --merge: the adapter comes too (it is part of the model); the records still do not.
    assert main(["export", str(run / "dpo"), "--out", str(tmp_path / "out2")]) == 0
    names = {p.name for p in (tmp_path / "out2").iterdir()}
    assert "adapter" in names and not names & RECORD_NAMES


def test_export_writes_a_generation_config_from_the_tokenizer_when_the_model_has_none(tmp_path, tiny):
    from transformers import AutoTokenizer, GenerationConfig

    adapted_stage(tiny, tmp_path / "stage", LoraTuning(r=4, dropout=0.0))
    (tmp_path / "stage" / "generation_config.json").unlink()
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out")]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    generation = GenerationConfig.from_pretrained(tmp_path / "out")
    assert (generation.eos_token_id, generation.pad_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )

    own = GenerationConfig(
        max_new_tokens=7, eos_token_id=tokenizer.eos_token_id
    )  # the model's own, no pad id
    own.save_pretrained(tmp_path / "stage")
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out2")]) == 0
    generation = GenerationConfig.from_pretrained(tmp_path / "out2")
    assert generation.max_new_tokens == 7 and generation.pad_token_id == tokenizer.pad_token_id


def test_export_refuses_a_merged_root_that_is_its_base(tmp_path, tiny, capsys):
    """The failure users of other frameworks report: merged weights byte-identical to the base while the
    adapter is not zero. Built by hand: the stage's root replaced by the base's weights."""
    adapted_stage(tiny, tmp_path / "stage", LoraTuning(r=4, dropout=0.0))
    shutil.copy2(tiny / "model.safetensors", tmp_path / "stage" / "model.safetensors")
    for merge in (["--merge"], []):  # without --merge the root is still the model the export holds
        assert main(["export", str(tmp_path / "stage"), *merge, "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "reproduces its base model exactly" in err and "the adapter was lost" in err
        assert "Nothing was written" in err and f"rlft export {tmp_path / 'stage' / 'adapter'} --merge" in err
        assert not (tmp_path / "out").exists()


def test_export_refuses_a_merged_root_that_is_not_base_plus_adapter(tmp_path, tiny, capsys):
    from safetensors.torch import load_file, save_file

    adapted_stage(tiny, tmp_path / "stage", AdapterTuning())
    weights = load_file(tmp_path / "stage" / "model.safetensors")
    key = next(k for k in weights if "mlp.down_proj" in k)
    weights[key] = weights[key] * 1.5  # merged, but not what the adapter says
    save_file(weights, tmp_path / "stage" / "model.safetensors", metadata={"format": "pt"})
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out")]) == 2
    assert "differ from base + adapter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_check_is_skipped_and_said_so_when_the_base_is_not_at_hand(tmp_path, tiny, capsys):
    adapted_stage(tiny, tmp_path / "stage", LoraTuning(r=4, dropout=0.0))
    config_path = tmp_path / "stage" / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "WARNING: merge check skipped" in out and "is not at hand" in out
    assert "merge check skipped" in (tmp_path / "out" / "README.md").read_text()

    # A base that is there but not the one the stage trained on (stage.json says another tiny model).
    config_path.write_text(json.dumps(config))
    write_record(tmp_path / "stage", stage="s", kind="sft", inputs={"model": "tiny:tiny-other"})
    assert main(["export", str(tmp_path / "stage"), "--merge", "--out", str(tmp_path / "out2")]) == 0
    assert "merge check skipped: the stage started from tiny model tiny-other" in capsys.readouterr().out


def test_merging_a_peft_folder_is_refused_when_the_merge_loses_the_adapter(
    tmp_path, tiny, capsys, monkeypatch
):
    from peft.tuners.tuners_utils import BaseTuner

    adapted_stage(tiny, tmp_path / "stage", LoraTuning(r=4, dropout=0.0))
    # A merge that drops the adapter: peft's unload() takes the LoRA layers off without folding them in.
    monkeypatch.setattr(BaseTuner, "merge_and_unload", lambda self, *a, **k: self.unload())
    assert (
        main(["export", str(tmp_path / "stage" / "adapter"), "--merge", "--out", str(tmp_path / "out")]) == 2
    )
    err = capsys.readouterr().err
    assert "reproduces its base model exactly" in err and "the PEFT folder itself is portable" in err
    assert not (tmp_path / "out").exists()


def test_a_prompt_export_card_names_its_method_and_how_to_load_it(tmp_path, tiny):
    """A stage folder whose stage.json says little: the card takes the method from adapter/ and tells
    how to load the base with its prompt."""
    adapted_stage(tiny, tmp_path / "stage", PromptTuning(num_virtual_tokens=3))
    assert main(["export", str(tmp_path / "stage"), "--out", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert front_matter(card)["tags"] == ["rlft", "prompt_tuning"]
    assert 'AutoPeftModelForCausalLM.from_pretrained(path + "/adapter")' in card
    assert "merge check" not in card  # nothing was merged


@pytest.mark.slow
def test_a_real_run_exports_without_its_records_and_generates(tmp_path, monkeypatch, capsys):
    """End to end: `rlft run` (SFT with LoRA -> DPO with LoRA, W&B offline, TensorBoard), then `rlft export
    --merge` of the DPO stage (merge check against the SFT folder), its card, and `rlft generate` on it."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("WANDB_MODE", "offline")  # W&B writes its offline run into each stage folder
    data = QUICKSTART_DATA
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        textwrap.dedent(f"""
        name: e2e
        model:
          tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, tokenizer_texts: [{data}/sft_train.jsonl]}}
        evaluate: {{prompts: {data}/heldout_prompts.jsonl, reward: reward_models.tasks:uppercase_copy,
                    max_prompts: 8, max_new_tokens: 8}}
        tracking: {{wandb: offline, tensorboard: true}}
        stages:
          - name: sft
            kind: sft
            data: {{train: {data}/sft_train.jsonl, max_rows: 64}}
            tuning: {{method: lora, r: 4, dropout: 0.0}}
            trainer: {{max_steps: 4, learning_rate: 1.0e-2}}
          - name: dpo
            kind: dpo
            model: {{from: sft}}
            data: {{train: {data}/prefs_train.jsonl, max_rows: 64}}
            max_length: 64
            tuning: {{method: lora, r: 4, dropout: 0.0}}
            trainer: {{max_steps: 3, learning_rate: 1.0e-2}}
        """)
    )
    run = tmp_path / "run"
    assert main(["run", str(pipeline), "--run-dir", str(run)]) == 0
    assert {"wandb", "tensorboard", "ranks", "stage.json"} <= {p.name for p in (run / "dpo").iterdir()}
    capsys.readouterr()

    assert main(["export", str(run / "dpo"), "--merge", "--out", str(tmp_path / "out")]) == 0
    assert "merge check passed" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert not names & RECORD_NAMES and {"README.md", "generation_config.json"} <= names
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    stage = AutoModelForCausalLM.from_pretrained(run / "dpo")
    assert torch.equal(logits(exported), logits(stage))

    card = (tmp_path / "out" / "README.md").read_text()
    record = json.loads((run / "dpo" / "stage.json").read_text())
    meta = front_matter(card)
    assert meta["tags"] == ["rlft", "dpo", "lora"]
    assert meta["datasets"] == [
        *json.loads((run / "sft" / "stage.json").read_text())["inputs"]["data"].values(),
        *record["inputs"]["data"].values(),
    ]
    assert "| 1 | sft | sft | lora |" in card and "| 2 | dpo | dpo | lora | stage `sft` |" in card
    assert "task_reward" in record["metrics"]
    for key, value in record["metrics"].items():  # every number stage.json holds, as the card prints it
        if isinstance(value, float):
            assert f"| {key} | {value:.4g} |" in card

    generate = ["--prompt", "shout: a b c", "--max-new-tokens", "4"]
    assert main(["generate", str(tmp_path / "out"), *generate]) == 0
    from_export = capsys.readouterr().out
    assert main(["generate", str(run / "dpo"), *generate]) == 0
    assert capsys.readouterr().out == from_export
