"""SPEC B35 on an encrypted store: `retrysafe keys` lists, shows and deletes every record,
and one whose outcome does not open (sealed with a key the store was not opened with, or
stored in clear) is shown as unreadable, never its bytes, instead of failing every command."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, open_store
from retrysafe.cli import app
from retrysafe.stores.encrypted import Keyring
from tests.cli.test_keys import as_json, keys
from tests.conftest import fresh_store_url

KEYS_ENV = "RS_TEST_CLI_UNREADABLE_KEYS"
OLD, NEW = Keyring.generate_key(), Keyring.generate_key()
SECRET_BODY = b"card 4242-unreadable"
CLEAR_BODY = b"stored-in-clear-7c1d"


@dataclass(frozen=True)
class Seeded:
    """A store URL (opened with NEW only) and its records."""

    url: str
    lost: Identity  # done, sealed with OLD: does not open
    clear: Identity  # done, stored in clear: does not open
    readable: Identity  # done, sealed with NEW
    running: Identity  # in flight


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def seeded(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Seeded]:
    """A store on each backend with one record of each kind, its URL naming NEW only."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        seeds = Seeded(
            f"{url}&encryption_key_env={KEYS_ENV}",
            Identity("jobs", "", "lost"),
            Identity("jobs", "", "clear"),
            Identity("jobs", "", "fine"),
            Identity("jobs", "", "running"),
        )
        for keyring, identity, body in (
            (Keyring([OLD]), seeds.lost, SECRET_BODY),
            (None, seeds.clear, CLEAR_BODY),
            (Keyring([NEW]), seeds.readable, b"readable"),
        ):
            with contextlib.closing(open_store(url, encryption=keyring)) as store:
                claim = store.claim(identity, "fp", lease=30, retention=3600)
                store.complete(identity, claim.token, body, retention=3600)
        with contextlib.closing(open_store(url)) as store:
            store.claim(seeds.running, "fp", lease=300, retention=3600)
        monkeypatch.setenv(KEYS_ENV, NEW)
        yield seeds


def _show(runner: CliRunner, url: str, key: str) -> dict[str, object]:
    return as_json(keys(runner, url, "show", key, "--namespace", "jobs", "--scope", "", "--json"))


def test_b35_list_and_stats_go_on_past_records_that_do_not_open(
    runner: CliRunner, seeded: Seeded
) -> None:
    """`list` shows all four records, those that do not open marked, in JSON and in the
    table; `stats` counts them."""
    listed = as_json(keys(runner, seeded.url, "list", "--json"))["records"]
    assert isinstance(listed, list)
    marked = {r["key"]: r["outcome_unreadable"] for r in listed}
    assert marked == {"lost": True, "clear": True, "fine": False, "running": False}
    table = keys(runner, seeded.url, "list")
    assert table.exit_code == 0, table.output
    assert table.stdout.count("done (outcome unreadable)") == 2
    stats = as_json(keys(runner, seeded.url, "stats", "--json"))
    assert (stats["done"], stats["in_flight"]) == (3, 1)


def test_b35_show_says_why_an_outcome_does_not_open_and_prints_none_of_it(
    runner: CliRunner, seeded: Seeded
) -> None:
    """`show` of a record sealed with a dropped key names that key; of one in clear says so;
    neither prints the bytes; a readable record beside them shows in clear."""
    lost = _show(runner, seeded.url, "lost")
    old_id = Keyring([OLD]).key_ids[0]
    assert lost["outcome_unreadable"] is True
    outcome = lost["outcome"]
    assert isinstance(outcome, dict)
    assert (outcome["kind"], outcome["key_id"]) == ("unreadable", old_id)
    assert f"encrypted with key {old_id}, which the environment variable" in outcome["message"]
    clear = _show(runner, seeded.url, "clear")["outcome"]
    assert isinstance(clear, dict)
    assert clear["kind"] == "unreadable"
    assert "is not encrypted" in clear["message"]
    assert "key_id" not in clear
    assert _show(runner, seeded.url, "fine")["outcome"] == {"kind": "raw", "text": "readable"}
    table = keys(runner, seeded.url, "show", "clear")
    assert table.exit_code == 0, table.output
    for output in (str(lost), str(clear), table.stdout):
        assert SECRET_BODY.decode() not in output
        assert CLEAR_BODY.decode() not in output


def test_b35_delete_removes_a_record_that_does_not_open_and_the_others(
    runner: CliRunner, seeded: Seeded
) -> None:
    """`delete` works by identity and token, never opening: the unreadable records, the claim
    in flight (found by key alone) and the readable one all go."""
    for key in ("lost", "clear", "running", "fine"):
        result = keys(runner, seeded.url, "delete", key, "--json")
        assert result.exit_code == 0, result.output
        assert as_json(result)["deleted"] is True
    assert as_json(keys(runner, seeded.url, "list", "--json"))["records"] == []


def test_b35_the_escaped_option_shows_a_backslash_escaped_as_two(runner: CliRunner) -> None:
    """The help of `--escaped` writes a backslash's escape as it is typed: two backslashes."""
    for command in ("show", "delete"):
        result = runner.invoke(app, ["keys", command, "--help"])
        assert result.exit_code == 0, result.output
        assert "\\\\ for a backslash" in " ".join(result.stdout.split())
