"""rlft.log: one `rlft` logger, levels that filter, the main process alone, one plain line per record
outside a terminal, and the level chosen on the command line reaching the stage processes."""

import logging
from types import SimpleNamespace

import pytest

from rlft.cli import main
from rlft.errors import RlftError
from rlft.log import setup_logging, stage_log

log = logging.getLogger("rlft.test_log")


@pytest.fixture(autouse=True)
def main_process(monkeypatch):
    """A single process, the level left to the test (conftest restores the `rlft` logger itself)."""
    for name in ("RANK", "WORLD_SIZE", "RLFT_LOG_LEVEL", "RLFT_LOG_ALL_RANKS"):
        monkeypatch.delenv(name, raising=False)


def test_debug_is_hidden_at_info_and_shown_at_debug(capsys):
    setup_logging("info")
    log.debug("a debug line")
    log.info("an info line")
    out = capsys.readouterr().out
    assert "an info line" in out and "a debug line" not in out

    setup_logging("debug")
    log.debug("a debug line")
    assert capsys.readouterr().out == "[rlft] DEBUG: a debug line\n"

    setup_logging("warning")
    log.info("an info line")
    log.warning("a warning")
    assert capsys.readouterr().out == "[rlft] WARNING: a warning\n"


def test_the_level_comes_from_the_environment_and_names_are_checked(monkeypatch, capsys):
    monkeypatch.setenv("RLFT_LOG_LEVEL", "DEBUG")
    setup_logging()
    log.debug("heard")
    assert "heard" in capsys.readouterr().out
    with pytest.raises(RlftError, match="log level 'loud'.*use one of debug, info, warning, error"):
        setup_logging("loud")


def test_a_record_is_one_plain_line_outside_a_terminal(capsys):
    """No colour codes, no 80-column wrapping or padding, no markup read into the message: grep finds it."""
    setup_logging()
    message = "data: " + "x " * 100 + "[bold]not markup[/] /a/path 3.5"
    log.info(message)
    assert capsys.readouterr().out == f"[rlft] {message}\n"


def test_setting_up_twice_keeps_one_handler(capsys):
    setup_logging()
    setup_logging()
    log.info("once")
    assert capsys.readouterr().out == "[rlft] once\n"


def test_other_ranks_are_silent_unless_asked_and_their_errors_heard(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    setup_logging()
    log.info("from rank 1")
    log.warning("a warning on rank 1")
    log.error("an error on rank 1")
    assert capsys.readouterr().out == "[rlft rank 1] ERROR: an error on rank 1\n"

    monkeypatch.setenv("RLFT_LOG_ALL_RANKS", "1")
    setup_logging()
    log.info("from rank 1")
    assert capsys.readouterr().out == "[rlft rank 1] from rank 1\n"


def test_stage_log_keeps_what_the_console_leaves_out(tmp_path, capsys):
    """The console's lines reach stage.log through the pipeline's copy of the stage's output; the file
    handler adds the rest, so each line is there once."""
    setup_logging("info")
    with stage_log(tmp_path / "stage.log"):
        log.debug("a debug line")
        log.info("an info line")
    log.debug("after the stage")
    assert (tmp_path / "stage.log").read_text() == "[rlft] DEBUG: a debug line\n"
    assert capsys.readouterr().out == "[rlft] an info line\n"
    assert logging.getLogger("rlft").level == logging.INFO


def test_warnings_carry_the_warning_level(caplog):
    from rlft.stages import sft

    with pytest.raises(RlftError):
        sft._check_truncation(SimpleNamespace(name="sft"), None, before=4, after=0, max_length=8)
    sft._check_truncation(SimpleNamespace(name="sft"), None, before=4, after=3, max_length=8)
    [record] = [r for r in caplog.records if r.name.startswith("rlft")]
    assert record.levelno == logging.WARNING and record.name == "rlft.stages.sft"
    assert record.getMessage().startswith("1 of 4 training rows have no completion token left")


def test_cli_log_level_sets_the_level_for_stage_processes(monkeypatch):
    monkeypatch.setenv("RLFT_LOG_LEVEL", "info")  # restored after the test: the CLI sets it
    monkeypatch.setattr("rlft.cli.COMMANDS", {"run": lambda args: 0})
    assert main(["--log-level", "debug", "run", "p.yaml"]) == 0
    import os

    assert os.environ["RLFT_LOG_LEVEL"] == "debug"
    assert logging.getLogger("rlft").getEffectiveLevel() == logging.DEBUG


@pytest.mark.slow
def test_debug_lines_reach_the_stage_log_and_the_console_at_debug_only(
    tmp_path, write_pipeline, monkeypatch, capsys
):
    """`rlft --log-level debug run`: the stage's process logs at debug (its output and stage.log);
    at the default level its debug lines are in stage.log only."""
    monkeypatch.setenv("RLFT_LOG_LEVEL", "info")  # restored after the test: the CLI sets it
    pipeline = write_pipeline(evaluate=True)
    run_dir = tmp_path / "run"
    debug_line = (
        f"[rlft] DEBUG: stage base (evaluate): process 0 of 1, work folder {run_dir / '.work' / 'base'}"
    )

    assert (
        main(["--log-level", "debug", "run", str(pipeline), "--run-dir", str(run_dir), "--only", "base"]) == 0
    )
    out = capsys.readouterr().out
    assert debug_line in out.splitlines()  # the child's line, copied to the terminal
    assert any(line.startswith("[rlft] DEBUG: $ ") for line in out.splitlines())  # the parent's
    log_lines = (run_dir / "base" / "stage.log").read_text().splitlines()
    assert log_lines.count(debug_line) == 1
    assert any(line.startswith("[rlft] task reward on 8 held-out prompts") for line in log_lines)

    assert (
        main(
            [
                "--log-level",
                "info",
                "run",
                str(pipeline),
                "--run-dir",
                str(run_dir),
                "--only",
                "base",
                "--force",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "DEBUG" not in out and "[rlft] task reward on 8 held-out prompts" in out
    log_lines = (run_dir / "base" / "stage.log").read_text().splitlines()
    assert log_lines.count(debug_line) == 1  # written by the stage itself, once
    assert sum(line.startswith("[rlft] task reward on 8") for line in log_lines) == 1  # copied once
