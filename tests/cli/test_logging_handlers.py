"""A command run in-process (a test's `CliRunner`, a program calling the CLI) shows its warnings
while it runs and leaves no logging handler behind on the stream it was given, which is closed
once it returns: a later warning from anything in the process would fail on it ("I/O operation
on closed file"), as held outcomes' did in CI's output."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from retrysafe.cli import app


def handlers() -> dict[str, list[logging.Handler]]:
    """The handlers of the loggers the commands show warnings of."""
    return {
        name: list(logging.getLogger(name).handlers)
        for name in ("retrysafe", "retrysafe.completer")
    }


def test_complete_once_leaves_the_logging_handlers_as_it_found_them(tmp_path: Path) -> None:
    """`retrysafe complete --once` on a database with nothing to finish: it ran, and every
    logger's handlers and level are what they were before."""
    path = tmp_path / "app.db"
    sqlite3.connect(path).close()
    before = handlers()
    levels = {name: logging.getLogger(name).level for name in before}
    registry = "tests.completer.orders:registry"
    command = ["complete", "--store", f"sqlite:///{path}", "--app", registry, "--once"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "completed 0" in result.output
    assert handlers() == before
    assert {name: logging.getLogger(name).level for name in before} == levels
