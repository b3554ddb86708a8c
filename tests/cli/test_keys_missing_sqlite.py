"""`retrysafe keys` on a SQLite path that does not exist says so and creates nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe.cli import app

COMMANDS = [["list"], ["show", "order-1"], ["delete", "order-1"], ["purge"], ["stats"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_keys_on_a_missing_sqlite_file_fail_without_creating_it(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """Each keys command refuses a missing SQLite file (relative or absolute) with one line
    and exit 1, and the file is not created."""
    monkeypatch.chdir(tmp_path)
    for url, path in (
        ("sqlite:///typo.db", tmp_path / "typo.db"),
        (f"sqlite:///{tmp_path / 'absent.db'}", tmp_path / "absent.db"),
    ):
        result = runner.invoke(app, ["keys", *command, "--store", url])
        assert result.exit_code == 1, result.output
        assert result.stderr == (
            f"error: No SQLite database at {path}: the keys commands read an existing store "
            "and never create one.\n"
        )
        assert result.stdout == ""
        assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_bad_sqlite_url_is_still_a_usage_error(runner: CliRunner, tmp_path: Path) -> None:
    """An invalid SQLite URL is exit 2 even when its file is missing: the URL is read first."""
    result = runner.invoke(
        app, ["keys", "list", "--store", f"sqlite:///{tmp_path / 'absent.db'}?bogus=1"]
    )
    assert result.exit_code == 2, result.output
    assert "Unknown store URL option 'bogus'" in result.stderr
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("cli_store_url", ["sqlite"], indirect=True)
def test_keys_read_an_existing_sqlite_file(runner: CliRunner, cli_store_url: str) -> None:
    """A SQLite file that exists, even empty of records, is read as before."""
    result = runner.invoke(app, ["keys", "list", "--store", cli_store_url])
    assert result.exit_code == 0, result.output
    assert result.stdout == "No records match.\n"
