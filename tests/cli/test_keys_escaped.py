"""SPEC B34/B35 and B17 in `retrysafe keys`: a key no terminal carries (LF, NUL, a lone
surrogate) is named with `--escaped`; `--json` is standard JSON whatever a record holds; and a
delete removes the record as it was read, never a claim a retry took over since; on every
backend."""

from __future__ import annotations

import contextlib
import json

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, ManualClock, idempotent, open_store
from retrysafe.cli._records import delete_as_read
from tests.cli.test_keys import keys

ODD = Identity("jobs", "t\ud800", "batch\n7\x00\ud800")  # as a client's JSON can make them
INF = Identity("ratios", "", "r-inf")


def _strict(text: str) -> dict[str, object]:
    """Parse `text` as standard JSON: `NaN` and `Infinity` are not."""

    def refuse(constant: str) -> object:
        raise AssertionError(f"not standard JSON: {constant}")

    data = json.loads(text, parse_constant=refuse)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def odd(cli_store_url: str) -> str:
    """The store holding a done record under ODD and a function's `inf` outcome under INF."""
    with contextlib.closing(open_store(cli_store_url)) as store:
        claim = store.claim(ODD, "fp", lease=30, retention=3600)
        store.complete(ODD, claim.token, b"done", retention=3600)

        @idempotent(store, key="k", namespace=INF.namespace)
        def ratio(k: str) -> float:
            return float("inf")

        ratio(INF.key)
    return cli_store_url


def test_b35_escaped_names_a_key_with_control_characters_and_a_lone_surrogate(
    runner: CliRunner, odd: str
) -> None:
    """`keys show --escaped` finds the record from its key, scope and namespace written as
    `--json` writes them, and `--json` gives them back exactly; the plain text does not."""
    shown = keys(
        runner, odd, "show", "--escaped", "batch\\n7\\x00\\ud800", "--scope", "t\\ud800", "--json"
    )
    assert shown.exit_code == 0, shown.output
    data = _strict(shown.stdout)
    assert (data["namespace"], data["scope"], data["key"]) == (ODD.namespace, ODD.scope, ODD.key)
    assert shown.stdout.isascii()
    table = keys(runner, odd, "show", "--escaped", "batch\\n7\\u0000\\ud800")
    assert table.exit_code == 0, table.output
    assert "batch\\n7\\x00\\ud800" in table.stdout  # written as escapes
    assert keys(runner, odd, "show", "batch\\n7\\x00\\ud800").exit_code == 1


def test_b35_escaped_deletes_that_key_and_a_malformed_escape_is_a_usage_error(
    runner: CliRunner, odd: str
) -> None:
    """`keys delete --escaped` deletes the record; `\\q` is refused with exit 2."""
    bad = keys(runner, odd, "delete", "--escaped", "batch\\q")
    assert bad.exit_code == 2, bad.output
    assert "malformed escape" in bad.stderr
    deleted = keys(runner, odd, "delete", "--escaped", "batch\\n7\\x00\\ud800", "--json")
    assert deleted.exit_code == 0, deleted.output
    assert _strict(deleted.stdout)["deleted"] is True
    with contextlib.closing(open_store(odd)) as store:
        assert store.get(ODD) is None


def test_b35_show_json_writes_a_non_finite_outcome_as_standard_json(
    runner: CliRunner, odd: str
) -> None:
    """A function's `inf` is the string "Infinity" in `--json`, with its repr."""
    shown = keys(runner, odd, "show", INF.key, "--namespace", INF.namespace, "--json")
    assert shown.exit_code == 0, shown.output
    outcome = _strict(shown.stdout)["outcome"]
    assert isinstance(outcome, dict)
    assert (outcome["value"], outcome["repr"]) == ("Infinity", "inf")


def test_b17_a_delete_as_read_never_deletes_the_claim_a_retry_took_over(
    cli_store_url: str,
) -> None:
    """A claim read while stuck, then taken over by a retry, is not deleted (False) and the
    retry keeps its claim; read again, it is deleted; a done record is deleted by identity."""
    identity = Identity("jobs", "t", "k")
    clock = ManualClock()
    with contextlib.closing(open_store(cli_store_url, clock=clock)) as store:
        store.claim(identity, "fp", lease=5, retention=3600)
        clock.advance(10)  # the worker died: its lease ended
        read = store.get(identity)
        assert read is not None
        retry = store.claim(identity, "fp", lease=60, retention=3600)
        assert retry.taken_over
        assert delete_as_read(store, read) is False
        held = store.get(identity)
        assert held is not None
        assert held.token == retry.token
        assert delete_as_read(store, held) is True
        assert store.get(identity) is None
        done = store.claim(identity, "fp", lease=60, retention=3600)
        finished = store.complete(identity, done.token, b"ok", retention=3600)
        assert delete_as_read(store, finished) is True
        assert store.get(identity) is None
