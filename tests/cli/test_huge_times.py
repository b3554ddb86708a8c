"""SPEC B21 and B35 in the CLI: a record whose times no date holds (kept for 31,700 years by a
tool that does not bound retention, as releases before 100 years was the bound did) is listed
and shown, its expiry as the raw number of seconds, never an error."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, open_store
from retrysafe.cli import app
from retrysafe.cli._records import iso

HUGE = Identity("jobs", "", "kept-forever")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store holding HUGE, done, with a retention of 1e12 seconds."""
    url = f"sqlite:///{tmp_path / 'huge.db'}"
    with contextlib.closing(open_store(url)) as store:
        claim = store.claim(HUGE, "fp", lease=30, retention=1e12)
        store.complete(HUGE, claim.token, b"[1]", retention=1e12)
    return url


@pytest.mark.parametrize(
    "command",
    [["keys", "list"], ["keys", "list", "--json"], ["keys", "show", "kept-forever"],
     ["keys", "show", "kept-forever", "--json"]],
)  # fmt: skip
def test_b21_a_record_kept_for_millennia_is_listed_and_shown(
    command: list[str], store_url: str, runner: CliRunner
) -> None:
    """`keys list` and `keys show`, as tables and as JSON, answer with the record."""
    result = runner.invoke(app, [*command, "--store", store_url])
    assert result.exit_code == 0, result.output
    assert "kept-forever" in result.stdout
    if "--json" in command:
        json.loads(result.stdout)


@pytest.mark.parametrize("seconds", [1e12 + 1.7e9, -1e12, float("inf"), float("nan")])
def test_b21_iso_shows_a_time_no_date_holds_as_its_number(seconds: float) -> None:
    """`iso` never raises: a time past year 9999 (or not a number) is written as it is."""
    assert iso(seconds) == str(seconds)
