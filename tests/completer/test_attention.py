"""An operation that keeps failing is marked as needing a person after `max_attempts` runs and
left alone; `keys` and the console show it; `complete --retry` finishes it once it is fixed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retrysafe import Identity, State, open_store
from retrysafe.cli import app
from retrysafe.completer import Completer, needing_attention
from retrysafe.console._data import summary
from retrysafe.console._pages import overview_page
from tests.completer import orders
from tests.completer.conftest import Shop

KEY = "order-blocked"
MAX_ATTEMPTS = 3


def _cli(*args: str) -> str:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_max_attempts_marks_needs_attention_and_stops(shop: Shop) -> None:
    """A finish phase that always raises is run `max_attempts` times by the completer, then
    marked: later passes leave it alone, `keys list`/`stats` and the console show it, and
    after the cause is removed `retrysafe complete --retry` finishes it from its recovery
    point, charging once."""
    database = shop.database
    blocker = database.create_table("rs_block", "reason TEXT")
    database.execute(f"INSERT INTO {blocker} VALUES ('stock check')")  # noqa: S608 - a test table
    request = orders.request_of(KEY, blocker=blocker, **shop.spec())
    conn = database.connect()
    try:
        with pytest.raises(RuntimeError, match="blocked"):
            orders.registry.run(
                conn, Identity("orders", "tenant-a", KEY), request, table=database.table
            )
    finally:
        conn.close()
    finishes = orders.calls["finish", KEY]

    completer = Completer(
        orders.registry, connect=database.connect, table=database.table, max_attempts=MAX_ATTEMPTS
    )
    passes = [completer.run_once() for _ in range(MAX_ATTEMPTS + 2)]
    assert [p.failed for p in passes] == [1] * (MAX_ATTEMPTS - 1) + [0, 0, 0]
    assert [p.needs_attention for p in passes] == [0] * (MAX_ATTEMPTS - 1) + [1, 0, 0]
    assert orders.calls["finish", KEY] == finishes + MAX_ATTEMPTS  # not one run more
    (row,) = completer.find(KEY)
    assert row.attempts == MAX_ATTEMPTS
    assert row.attention_at is not None
    assert row.last_error == f"RuntimeError: order {KEY} is blocked"

    store = open_store(database.url)
    try:
        (attention,) = needing_attention(store)
        assert attention.record.identity.key == KEY
        assert attention.record.recovery_point == "charge"
        overview = summary(store)
        assert overview["needs_attention_total"] == 1
        assert "Needs attention (1)" in overview_page(overview)
    finally:
        store.close()
    listed = _cli("keys", "list", "--store", database.url)
    assert "needs attention" in listed
    assert "retrysafe.attention" not in listed  # the mark itself is retrysafe's own record
    only = json.loads(
        _cli("keys", "list", "--store", database.url, "--state", "needs_attention", "--json")
    )
    assert [(r["key"], r["needs_attention"], r["attempts"]) for r in only["records"]] == [
        (KEY, True, MAX_ATTEMPTS)
    ]
    stats = json.loads(_cli("keys", "stats", "--store", database.url, "--json"))
    assert stats["needs_attention"] == 1
    assert stats["total"] == 1  # the order; the mark is not counted as the app's

    database.execute(f"DELETE FROM {blocker}")  # noqa: S608 - the person fixes the cause
    retried = _cli(
        "complete",
        "--store",
        database.url,
        "--app",
        "tests.completer.orders:registry",
        "--retry",
        KEY,
    )
    assert "completed 1" in retried
    record = shop.record(KEY)
    assert record is not None
    assert record.state is State.DONE
    assert shop.provider.created == 1
    assert shop.phases_logged(KEY) == ["charge", "finish", "reserve"]
    stats = json.loads(_cli("keys", "stats", "--store", database.url, "--json"))
    assert stats["needs_attention"] == 0


def test_a_late_client_retry_gives_a_marked_operation_fresh_attempts(shop: Shop) -> None:
    """A client that retries an operation marked as needing attention takes it over: the mark
    no longer stands, and the completer may try it again, `max_attempts` more times."""
    database = shop.database
    blocker = database.create_table("rs_block", "reason TEXT")
    database.execute(f"INSERT INTO {blocker} VALUES ('stock check')")  # noqa: S608 - a test table
    request = orders.request_of(KEY, blocker=blocker, **shop.spec())
    identity = Identity("orders", "tenant-a", KEY)

    def client_run() -> None:
        conn = database.connect()
        try:
            with pytest.raises(RuntimeError, match="blocked"):
                orders.registry.run(conn, identity, request, table=database.table)
        finally:
            conn.close()

    client_run()
    completer = Completer(
        orders.registry, connect=database.connect, table=database.table, max_attempts=1
    )
    assert completer.run_once().needs_attention == 1
    client_run()  # the late retry fails too, but it was the client's attempt
    (row,) = completer.find(KEY)
    assert (row.attempts, row.attention_at) == (0, None)
    store = open_store(database.url)
    try:
        assert needing_attention(store) == []
    finally:
        store.close()
    assert completer.run_once().needs_attention == 1  # one fresh attempt, then marked again
