"""`keys list/show/delete --scope` take a scope as `keys list` shows it: a unique prefix of
its hash (`c:923b541a…`, `c:923b541a`, `923b541a`) or the whole value (SPEC B35: every key is
shown with its scope)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, open_store
from retrysafe._http import Settings, encode_outcome
from tests.cli.test_keys import ids, keys, listed

# Two credential scopes whose hashes share their first 4 hex digits, and a principal's.
SCOPE_A = "c:923b541a" + "0a" * 28
SCOPE_B = "c:923bffff" + "1b" * 28
SCOPE_P = "p:5e0f00aa" + "2c" * 28
ORDER_A = Identity("http", SCOPE_A, "order-1")
ORDER_B = Identity("http", SCOPE_B, "order-1")
ORDER_P = Identity("http", SCOPE_P, "order-2")


@pytest.fixture
def scoped(cli_store_url: str) -> str:
    """A store holding order-1 in two scopes with a common start, and order-2 in a third."""
    outcome = encode_outcome(201, [], b"{}", Settings())
    store = open_store(cli_store_url)
    try:
        for identity in (ORDER_A, ORDER_B, ORDER_P):
            claim = store.claim(identity, "fp", lease=60, retention=3600)
            store.complete(identity, claim.token, outcome, retention=3600)
    finally:
        store.close()
    return cli_store_url


def test_b35_list_shows_a_hashed_scope_by_its_start(runner: CliRunner, scoped: str) -> None:
    """The table shows each hashed scope as its kind and first 8 hex digits; --json in full."""
    table = keys(runner, scoped, "list")
    assert table.exit_code == 0, table.output
    for shown in ("c:923b541a…", "c:923bffff…", "p:5e0f00aa…"):
        assert shown in table.stdout
    assert SCOPE_A not in table.stdout
    assert listed(keys(runner, scoped, "list", "--json")) == ids(ORDER_A, ORDER_B, ORDER_P)


@pytest.mark.parametrize(
    "given", ["c:923b541a…", "c:923b541a...", "c:923b541a", "923b541a", "c:923b5", SCOPE_A]
)
def test_b35_list_and_show_accept_a_unique_scope_prefix(
    runner: CliRunner, scoped: str, given: str
) -> None:
    """A unique prefix of a scope, as listed (ellipsis included) or without its kind, names
    that scope for list and show, as the whole value does."""
    assert listed(keys(runner, scoped, "list", "--json", "--scope", given)) == ids(ORDER_A)
    shown = keys(runner, scoped, "show", "order-1", "--scope", given, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["scope"] == SCOPE_A
    with_namespace = keys(
        runner, scoped, "show", "order-1", "--scope", given, "--namespace", "http"
    )
    assert with_namespace.exit_code == 0, with_namespace.output
    assert SCOPE_A in with_namespace.stdout


def test_delete_accepts_a_unique_scope_prefix(runner: CliRunner, scoped: str) -> None:
    """`delete --scope 923bffff` deletes order-1 in that scope only."""
    deleted = keys(runner, scoped, "delete", "order-1", "--scope", "923bffff")
    assert deleted.exit_code == 0, deleted.output
    assert SCOPE_B in deleted.stdout
    assert listed(keys(runner, scoped, "list", "--json")) == ids(ORDER_A, ORDER_P)


@pytest.mark.parametrize("given", ["c:923b", "923b", "c:923b…"])
def test_an_ambiguous_scope_prefix_exits_2_naming_the_scopes(
    runner: CliRunner, scoped: str, given: str
) -> None:
    """A prefix of two scopes is refused, list and show alike: exit 2, one line naming both."""
    for args in (["list"], ["show", "order-1"], ["delete", "order-1"]):
        result = keys(runner, scoped, *args, "--scope", given)
        assert result.exit_code == 2, (args, result.output)
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("error: ")
        assert SCOPE_A in result.stderr
        assert SCOPE_B in result.stderr
    assert listed(keys(runner, scoped, "list", "--json")) == ids(ORDER_A, ORDER_B, ORDER_P)


def test_a_prefix_is_only_ever_the_start_of_a_scope(runner: CliRunner, scoped: str) -> None:
    """Text that starts no scope nor hash (a piece from the middle of a hash, say) lists
    nothing (exit 0) and shows nothing (exit 1)."""
    for given, expected in (("c:0000", set()), ("0a0a", set()), ("5e0f00aa2c", ids(ORDER_P))):
        assert listed(keys(runner, scoped, "list", "--json", "--scope", given)) == expected
    missing = keys(runner, scoped, "show", "order-2", "--scope", "c:0000")
    assert missing.exit_code == 1
    assert missing.stderr == "error: No live record for key 'order-2', scope 'c:0000'.\n"


def test_only_a_hashed_scope_is_named_by_a_start(runner: CliRunner, scoped: str) -> None:
    """A scope that is not a hash (a tenant id) is named only by its whole value, so
    `tenant-1` never stands for `tenant-10`; nor do fewer than 4 hex digits name a hash."""
    tenant = Identity("jobs", "tenant-10", "order-3")
    store = open_store(scoped)
    try:
        store.claim(tenant, "fp", lease=60, retention=3600)
    finally:
        store.close()
    assert listed(keys(runner, scoped, "list", "--json", "--scope", "tenant-1")) == set()
    assert listed(keys(runner, scoped, "list", "--json", "--scope", "tenant-10")) == ids(tenant)
    assert keys(runner, scoped, "show", "order-3", "--scope", "tenant-1").exit_code == 1
    for short in ("c:923", "923", "5e0"):
        assert listed(keys(runner, scoped, "list", "--json", "--scope", short)) == set()
