"""Durations on the command line (B30, B21): `nan`, `inf` or a number too large for a float is
not a duration: a usage error (exit 2) in one line, never a completer loop that spins."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe.cli import app

NOT_DURATIONS = ["nan", "inf", "-inf", "1e400", "-5"]


@pytest.mark.parametrize("value", NOT_DURATIONS)
@pytest.mark.parametrize("option", ["--interval", "--lease"])
def test_b30_complete_refuses_a_duration_that_is_not_finite(
    option: str, value: str, runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retrysafe complete --interval nan` exits 2 with one line naming the value."""
    (tmp_path / "regmod.py").write_text(
        "from retrysafe.completer import Registry\nregistry = Registry()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    database = tmp_path / "app.db"
    sqlite3.connect(database).close()
    result = runner.invoke(
        app,
        ["complete", "--store", f"sqlite:///{database}", "--app", "regmod:registry", "--once",
         option, value],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "not a duration" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", NOT_DURATIONS)
def test_b21_keys_list_refuses_an_age_that_is_not_finite(
    value: str, runner: CliRunner, tmp_path: Path
) -> None:
    """`retrysafe keys list --older-than nan` is a usage error too."""
    store = f"sqlite:///{tmp_path / 's.db'}"
    result = runner.invoke(app, ["keys", "list", "--store", store, "--older-than", value])
    assert result.exit_code == 2, result.output
    assert "not a duration" in result.output
