"""SPEC B35: `retrysafe keys` prints every stored value literally, on SQLite, PostgreSQL and Redis.

Any HTTP client chooses its Idempotency-Key, so keys, scopes, namespaces and stored bodies may
hold Rich markup, emoji codes or terminal control sequences: the admin tools must print them as
text, never interpret them, and show control characters as escapes.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner, Result

from retrysafe import Identity, open_store
from retrysafe._http import Settings, encode_outcome
from retrysafe.cli._common import literal
from tests.cli.test_keys import ids, keys, listed

# Each hostile value, and how it must appear on the console.
HOSTILE = {
    "[/]": "[/]",
    "[bold red]FAKE[/]": "[bold red]FAKE[/]",
    ":warning:": ":warning:",
    "\x1b[2J\x1b]0;pwned\x07": "\\x1b[2J\\x1b]0;pwned\\x07",
    "a\rb": "a\\rb",
    "\u202egnp.exe": "\\u202egnp.exe",
    "\u2066iso\u2069 bs\x08 del\x7f csi\x9b": "\\u2066iso\\u2069 bs\\x08 del\\x7f csi\\x9b",
}
# Characters that must never reach the terminal raw.
RAW = ("\x1b", "\x07", "\x08", "\r", "\x7f", "\x9b", "\u202e", "\u2066", "\u2069")


def identity(value: str) -> Identity:
    """The record whose namespace, scope and key are all `value`."""
    return Identity(value, value, value)


def hostile_store(url: str, values: list[str]) -> None:
    """Store, for each value, a done HTTP record whose every stored field holds that value."""
    store = open_store(url)
    try:
        for value in values:
            raw = value.encode()
            outcome = encode_outcome(200, [(b"x-note", raw)], raw, Settings())
            claim = store.claim(identity(value), value, lease=60, retention=3600)
            store.checkpoint(identity(value), claim.token, value)
            store.complete(identity(value), claim.token, outcome, retention=3600)
    finally:
        store.close()


@pytest.fixture
def hostile(cli_store_url: str) -> str:
    """The URL of a store holding one hostile record per value of HOSTILE."""
    hostile_store(cli_store_url, list(HOSTILE))
    return cli_store_url


def assert_clean(result: Result, code: int = 0) -> None:
    """The command exited with `code` and wrote no raw control or bidi character."""
    assert result.exit_code == code, (result.output, result.exception)
    for char in RAW:
        assert char not in result.stdout, (char, result.stdout)
        assert char not in result.stderr, (char, result.stderr)


def test_b35_literal_escapes_controls_and_keeps_everything_else() -> None:
    """`literal` escapes control and bidi characters, keeps markup and printable Unicode as text."""
    for value, shown in {**HOSTILE, "café ✓ 日本 \\x1b": "café ✓ 日本 \\x1b"}.items():
        text = literal(value)
        assert text.plain == shown
        assert not text.spans
        assert not text.style
    assert literal("tab\tnl\n\u2028\ufeff").plain == "tab\\tnl\\n\\u2028\\ufeff"


def test_b35_list_prints_hostile_values_literally(runner: CliRunner, hostile: str) -> None:
    """`keys list` shows each hostile key, scope and namespace as text, with controls escaped."""
    everything = keys(runner, hostile, "list")
    assert_clean(everything)
    for value, shown in HOSTILE.items():
        assert shown in everything.stdout
        one = keys(runner, hostile, "list", "--namespace", value)  # the namespace in the title
        assert_clean(one)
        assert f"in namespace {value!r}" in one.stdout
        assert one.stdout.count(shown) >= 3  # title, scope and key


def test_b35_show_prints_hostile_record_and_outcome_literally(
    runner: CliRunner, hostile: str
) -> None:
    """`keys show` prints a hostile record's fields and stored body as text, controls escaped."""
    for value, shown in HOSTILE.items():
        found = keys(runner, hostile, "show", value)
        chosen = keys(runner, hostile, "show", value, "--scope", value, "--namespace", value)
        for result in (found, chosen):
            assert_clean(result)
            for field in ("namespace", "scope", "key", "fingerprint", "recovery point"):
                assert f"{field} " in result.stdout
            # namespace, scope, key, fingerprint and recovery point each show the value
            assert result.stdout.count(shown) >= 5
            assert f'"body": {json.dumps(value)}' in result.stdout


def test_b35_delete_hostile_key_deletes_it_once(runner: CliRunner, hostile: str) -> None:
    """`keys delete` of a hostile key exits 0, names it literally, and removes that record only."""
    remaining = list(HOSTILE)
    for value, shown in HOSTILE.items():
        deleted = keys(runner, hostile, "delete", value)
        assert_clean(deleted)
        assert f"record '{shown}' (scope '{shown}', namespace '{shown}')" in deleted.stdout
        remaining.remove(value)
        assert listed(keys(runner, hostile, "list", "--json")) == ids(*map(identity, remaining))
        again = keys(runner, hostile, "delete", value)
        assert_clean(again, 1)
        assert again.stderr == f"error: No live record for key '{shown}'.\n"
    store = open_store(hostile)
    try:
        assert all(store.get(identity(value)) is None for value in HOSTILE)
    finally:
        store.close()


def test_b35_errors_echo_hostile_values_literally(runner: CliRunner, cli_store_url: str) -> None:
    """Errors naming a hostile key or scope print it literally on one line, never crashing."""
    store = open_store(cli_store_url)
    try:
        for scope in ("[bold red]FAKE[/]", "\x1b[2J\u202e"):
            store.claim(Identity("http", scope, "[/]"), "fp", lease=60, retention=3600)
    finally:
        store.close()
    ambiguous = keys(runner, cli_store_url, "show", "[/]")
    assert_clean(ambiguous, 2)
    assert ambiguous.stderr.startswith("error: Key '[/]' exists in 2 places")
    assert "scope '[bold red]FAKE[/]'" in ambiguous.stderr
    assert "scope '\\x1b[2J\\u202e'" in ambiguous.stderr
    assert len(ambiguous.stderr.splitlines()) == 1
    for args in (["a\rb"], ["[/]", "--scope", "[/]", "--namespace", "\x1b[2J"]):
        for command in ("show", "delete"):
            missing = keys(runner, cli_store_url, command, *args)
            assert_clean(missing, 1)
            assert missing.stderr.startswith(f"error: No live record for key {args[0]!r}")
            assert len(missing.stderr.splitlines()) == 1


def test_b35_json_output_escapes_controls_and_keeps_exact_values(
    runner: CliRunner, hostile: str
) -> None:
    """`--json` output has no raw control character and decodes to the exact stored values."""
    everything = keys(runner, hostile, "list", "--json")
    assert_clean(everything)
    assert listed(everything) == ids(*map(identity, HOSTILE))
    for value in HOSTILE:
        shown = keys(runner, hostile, "show", value, "--json")
        assert_clean(shown)
        data = json.loads(shown.stdout)
        assert (data["namespace"], data["scope"], data["key"]) == (value, value, value)
        assert (data["fingerprint"], data["recovery_point"]) == (value, value)
        assert data["outcome"]["body"] == value


def test_b35_purge_and_stats_print_no_stored_value(runner: CliRunner, hostile: str) -> None:
    """`keys purge` and `keys stats` print counts only, so hostile records leave them clean."""
    for command in ("purge", "stats"):
        result = keys(runner, hostile, command)
        assert_clean(result)
        for shown in HOSTILE.values():
            assert shown not in result.stdout
