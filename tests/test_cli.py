"""`rlft --help`, each subcommand's help, and errors printed as one clear line (no traceback)."""

import subprocess
import sys

import pytest

from rlft.cli import build_parser, main


def test_top_level_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "validate", "quickstart", "data", "config"):
        assert command in out
    assert "rlft quickstart" in out


@pytest.mark.parametrize("command", ["run", "validate", "quickstart"])
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: rlft {command}" in out
    if command == "run":
        for flag in ("--run-dir", "--only", "--from", "--force", "--set"):
            assert flag in out


def test_data_inspect_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "inspect", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: rlft data inspect" in out
    for flag in ("--format", "--field", "--tokenizer", "--category", "--max-length", "--out"):
        assert flag in out
    for fmt in ("preference", "prompt_completion", "language_modeling", "unpaired_preference", "contrastive"):
        assert fmt in out
    assert "data_report.json" in out and "./data_report/" in out
    assert "rlft data inspect configs/data/quickstart/prefs_train.jsonl --format preference" in out


def test_data_without_subcommand_prints_its_help(capsys):
    assert main(["data"]) == 0
    assert "usage: rlft data" in capsys.readouterr().out


def test_config_without_subcommand_prints_its_help(capsys):
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "usage: rlft config" in out and "rlft config show dpo" in out


def test_config_show_kind_lists_keys_with_descriptions(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per key
    assert main(["config", "show", "dpo"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 5}
    assert "KL strength: higher keeps the policy closer to the reference" in rows["beta"]
    assert "0.1" in rows["beta"] and "float" in rows["beta"]
    for key in ("name", "loss_type", "data.train", "data.curate.dedup", "tuning.r", "trainer", "reference"):
        assert key in rows, key
    assert "drop rows equal to an earlier one" in rows["data.curate.dedup"]
    assert "trainer: passes through to trl.DPOConfig (trl.trainer.dpo_config:DPOConfig)" in out


def test_config_show_without_kind_lists_top_level_and_kinds(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "names the run folder runs/<name>" in out  # the top-level `name`
    assert "tracking.wandb" not in out  # nested keys: `rlft config show pipeline`
    for kind, trainer in (("sft", "trl.SFTConfig"), ("dpo", "trl.DPOConfig"), ("ppo", "-")):
        assert any(
            line.split("│")[1].strip() == kind and trainer in line for line in out.splitlines() if "│" in line
        )


def test_config_show_pipeline_flattens_nested_keys(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["config", "show", "pipeline"]) == 0
    out = capsys.readouterr().out
    assert "tracking.wandb" in out and "evaluate.max_new_tokens" in out and "model.tiny.hidden_size" in out


def test_config_show_unknown_kind_is_one_line_with_did_you_mean(capsys):
    assert main(["config", "show", "dpoo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown kind 'dpoo'; did you mean dpo?") and err.count("\n") == 1


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: rlft" in capsys.readouterr().out


def test_bad_input_is_one_line_error_not_traceback(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nstages: [{name: a, kind: sft, data: {train: t.jsonl}, trainer: {learning_rte: 1}}]\nmodel: m/m\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "rlft", "validate", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert (
        "stages[0].trainer.learning_rte: unknown key for SFTConfig; did you mean learning_rate?"
        in proc.stderr
    )


def test_set_needs_key_value(tmp_path, capsys):
    assert main(["run", "whatever.yaml", "--set", "oops"]) == 2
    assert "--set oops: write KEY=VALUE" in capsys.readouterr().err


def test_console_script_is_declared():
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    assert project["scripts"]["rlft"] == "rlft.cli:main"
    assert build_parser().prog == "rlft"


def test_readme_learning_rate_override_is_a_float(capsys):
    """README's `--set stages.sft.trainer.learning_rate=3e-4`: YAML 1.1 alone reads 3e-4 as text."""
    from rlft.api import Pipeline

    assert main(["validate", "quickstart", "--set", "stages.sft.trainer.learning_rate=3e-4"]) == 0
    pipeline = Pipeline.from_yaml("quickstart", overrides=["stages.sft.trainer.learning_rate=3e-4"])
    sft = next(s for s in pipeline.stages if s.name == "sft")
    assert sft.trainer["learning_rate"] == 3e-4 and isinstance(sft.trainer["learning_rate"], float)


def test_resume_command_is_the_same_command_without_force():
    from rlft.cli import resume_command

    argv = ["run", "my runs/p.yaml", "--force", "--set", "stages.sft.trainer.max_steps=5"]
    assert resume_command(argv) == "rlft run 'my runs/p.yaml' --set stages.sft.trainer.max_steps=5"
