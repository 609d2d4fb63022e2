"""rlft's logging: one `rlft` logger, a rich console handler, levels that mean something.

Every module logs through `logging.getLogger(__name__)`, under the `rlft` logger; `setup_logging`
gives that logger its console handler (the CLI and each stage process call it). A record is one
line, whole, never wrapped, so that `grep` finds it in a stage's log:

    [rlft] model: tiny llama (hidden 32, 2 layers)     INFO: the message alone
    [rlft] WARNING: no eval pairs (set data.eval ...)  any other level: named
    [rlft rank 1] ERROR: stage 'dpo' failed: ...       a process other than the main one: its rank

On a terminal the line is coloured; anywhere else (the pipe a stage process writes into, which
the pipeline copies to stage.log; a file; a test's capture) it is plain text.

The level: `rlft --log-level`, else $RLFT_LOG_LEVEL (the CLI sets it, so stage processes inherit
the choice), else info. Only the main process logs (DESIGN.md decision 10; the rank from
rlft.distributed); the others are heard with RLFT_LOG_ALL_RANKS=1, and their errors always (an
error on one rank alone, such as a cache it cannot read, would otherwise go unseen).

While a stage runs, `stage_log` also writes the records the console leaves out (debug, at the
default level) into the stage's stage.log, which thus keeps every level.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from rlft.distributed import is_main_process, process_rank
from rlft.errors import RlftError

logger = logging.getLogger("rlft")

LEVELS = ("debug", "info", "warning", "error")
LEVEL_ENV = "RLFT_LOG_LEVEL"
ALL_RANKS_ENV = "RLFT_LOG_ALL_RANKS"


def log_level(level: str | int | None = None) -> int:
    """A logging level from a name in LEVELS (any case), a number, or None: $RLFT_LOG_LEVEL, else info."""
    if isinstance(level, int):
        return level
    name = (level or os.environ.get(LEVEL_ENV) or "info").strip().lower()
    if name not in LEVELS:
        raise RlftError(f"log level {name!r} (--log-level or ${LEVEL_ENV}): use one of {', '.join(LEVELS)}")
    return logging.getLevelName(name.upper())


def prefix(record: logging.LogRecord) -> str:
    """`[rlft] `, `[rlft] WARNING: `, `[rlft rank 1] ERROR: `: what starts a record's line."""
    rank = process_rank()
    who = "rlft" if rank == 0 else f"rlft rank {rank}"
    level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
    return f"[{who}] {level}"


class RankFilter(logging.Filter):
    """Records of the main process; of every process with `all_ranks`; errors of every process."""

    def __init__(self, all_ranks: bool):
        super().__init__()
        self.all_ranks = all_ranks

    def filter(self, record: logging.LogRecord) -> bool:
        return self.all_ranks or record.levelno >= logging.ERROR or is_main_process()


class ConsoleHandler(RichHandler):
    """rich's handler, drawn as one line per record: `prefix(record)` then the message. No time,
    path or level column: rich would lay those out as a table padded and wrapped to the console's
    width (80 columns in a pipe). Writes to sys.stdout as it is at each record (a test's capture
    too); colour only on a terminal."""

    def __init__(self, level: int, *, all_ranks: bool):
        super().__init__(
            level,
            console=Console(soft_wrap=True),
            show_time=False,
            show_level=False,
            show_path=False,
            markup=False,
            keywords=[],
        )
        self.rank_filter = RankFilter(all_ranks)
        self.addFilter(self.rank_filter)

    def render(self, *, record, traceback, message_renderable):  # noqa: ARG002 - no rich tracebacks here
        style = f"logging.level.{record.levelname.lower()}"
        return Text.assemble(
            (prefix(record), "dim" if record.levelno == logging.INFO else style), message_renderable
        )


class LineFormatter(logging.Formatter):
    """The console's line as plain text (for files): `prefix(record)` then the message (and traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        return prefix(record) + super().format(record)


def setup_logging(level: str | int | None = None, *, all_ranks: bool | None = None) -> ConsoleHandler:
    """Give the `rlft` logger its console handler, replacing one set up before, and return it.

    level: debug, info, warning or error (or a logging number); default $RLFT_LOG_LEVEL, else info.
    all_ranks: log on every process, not only the main one; default: $RLFT_LOG_ALL_RANKS is 1.
    The `rlft` logger stops propagating to the root logger, as transformers' does: a program that
    configured the root logger would print every record twice. To send rlft's records elsewhere,
    give the `rlft` logger your handler instead of calling this.
    """
    if all_ranks is None:
        all_ranks = os.environ.get(ALL_RANKS_ENV, "0") not in ("", "0")
    handler = ConsoleHandler(log_level(level), all_ranks=all_ranks)
    for old in [h for h in logger.handlers if isinstance(h, ConsoleHandler)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(handler.level)
    logger.propagate = False
    return handler


def ensure_logging() -> None:
    """`setup_logging()` unless the `rlft` logger has a handler already (the CLI's, or yours): for
    the entry points a program may call directly (a pipeline run, a stage process)."""
    if not logger.handlers:
        setup_logging()


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[None]:
    """While the block runs, append the records below the console's level to `path` (a stage's
    stage.log), so that it keeps every level. The records at the console's level reach it already:
    the pipeline copies a stage's output into it (rlft/pipeline.py `_stream`, rlft/launched.py `tee`).
    """
    console = next((h for h in logger.handlers if isinstance(h, ConsoleHandler)), None)
    below = console.level if console is not None else logging.CRITICAL + 1  # no console: every record
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.addFilter(lambda record: record.levelno < below)
    handler.addFilter(console.rank_filter if console is not None else RankFilter(False))
    handler.setFormatter(LineFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
