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
    for command in ("run", "validate", "quickstart", "data"):
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
