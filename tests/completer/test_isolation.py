"""One operation cannot stop the completer: a builder that reads the database runs on the
completer's own connections, an operation refused before its claim is counted and marked for a
person, and an error of one operation is logged while the pass goes on to the others (B30)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest

from retrysafe import Identity, ManualClock
from retrysafe.completer import Completer, PhaseFunction, Registry, Step
from retrysafe.completer._connect import connector
from tests.completer.conftest import Shop

T0 = time.time()
LATER = T0 + 600.0  # every client's 1 s lease has long run out
clients = Registry()
"""The application's code as its clients ran it: each dies before its finish phase."""
completing = Registry()
"""The code the completer runs: the same operations, with a finish that does not vanish."""


class VanishedError(BaseException):
    """The client's process dies here: nothing releases its lease (not an Exception)."""


def _mark(connection: Any) -> str:
    return "%s" if type(connection).__module__.startswith("psycopg") else "?"


def _phases(spec: dict[str, Any], connection: Any, **extra: Any) -> dict[str, PhaseFunction]:
    """Reserve and finish one order of `spec` in its orders table."""
    mark, orders, key = _mark(connection), spec["orders"], spec["key"]

    def reserve(step: Step) -> None:
        values = f"({mark}, 'reserved', {mark})"
        connection.execute(f"INSERT INTO {orders} VALUES {values}", (key, extra.get("card")))  # noqa: S608 - a test table

    def finish(step: Step) -> bytes:
        connection.execute(f"UPDATE {orders} SET status = 'done' WHERE key = {mark}", (key,))  # noqa: S608 - a test table
        return b"done"

    return {"reserve": reserve, "finish": finish}


def _with_card(request: bytes, connection: Any) -> dict[str, PhaseFunction]:
    """An order whose builder reads the customer's card from the database first."""
    spec = json.loads(request)
    statement = f"SELECT card FROM {spec['cards']} WHERE customer = {_mark(connection)}"  # noqa: S608 - a test table
    (card,) = connection.execute(statement, ("alice",)).fetchone()
    return _phases(spec, connection, card=card)


def _plain(request: bytes, connection: Any) -> dict[str, PhaseFunction]:
    return _phases(json.loads(request), connection)


def _vanishing(build: Any) -> Any:
    def vanishing(request: bytes, connection: Any) -> Mapping[str, PhaseFunction]:
        def vanish(step: Step) -> None:
            raise VanishedError

        return {**build(request, connection), "finish": vanish}

    return vanishing


def _refused(request: bytes, connection: Any) -> Mapping[str, PhaseFunction]:
    """A build whose phases atomic phases refuse (a deploy that broke the operation)."""
    return {}


for namespace, client_build, completer_build in (
    ("cards", _with_card, _with_card),
    ("plain", _plain, _plain),
    ("refused", _plain, _refused),
):
    clients.operation(namespace)(_vanishing(client_build))
    completing.operation(namespace)(completer_build)


def _abandon(shop: Shop, namespace: str, key: str, *, at: float, **spec: str) -> Identity:
    """Run order `key` of `namespace` as a client that dies before its finish, at time `at`."""
    database = shop.database
    conn = database.connect()
    if database.kind == "postgres":
        conn.autocommit = True  # as the docs' psycopg client
    identity = Identity(namespace, "tenant-a", key)
    request = json.dumps({"key": key, **spec}).encode()
    try:
        with pytest.raises(VanishedError):
            clients.run(
                conn, identity, request, table=database.table, lease=1.0, clock=ManualClock(at)
            )
    finally:
        conn.close()
    return identity


def _tables(shop: Shop) -> dict[str, str]:
    """Create the orders and cards tables; return them as request fields."""
    database = shop.database
    orders = database.create_table("rs_iso_orders", "key TEXT PRIMARY KEY, status TEXT, card TEXT")
    cards = database.create_table("rs_iso_cards", "customer TEXT PRIMARY KEY, card TEXT")
    database.execute(f"INSERT INTO {cards} VALUES ('alice', 'card_1')")  # noqa: S608 - a test table
    return {"orders": orders, "cards": cards}


def _statuses(shop: Shop, orders: str) -> dict[str, str]:
    rows = shop.database.execute(f"SELECT key, status FROM {orders}")  # noqa: S608 - a test table
    return dict(rows)


def test_b30_a_builder_that_reads_the_database_completes_on_the_store_urls_connections(
    shop: Shop,
) -> None:
    """An order whose builder reads the database, abandoned first, and another namespace's
    order both complete in one pass of a completer on the store URL's connections."""
    tables = _tables(shop)
    _abandon(shop, "cards", "order-1", at=T0, **tables)
    _abandon(shop, "plain", "good-1", at=T0 + 1, **tables)
    connect, table = connector(shop.database.url)
    completer = Completer(completing, connect=connect, table=table, clock=ManualClock(LATER))

    done = completer.run_once()

    assert (done.completed, done.failed) == (2, 0)
    assert _statuses(shop, tables["orders"]) == {"order-1": "done", "good-1": "done"}
    assert shop.resumable_rows() == 0


def test_b30_an_operation_refused_before_its_claim_is_counted_then_marked_for_a_person(
    shop: Shop,
) -> None:
    """An operation whose phases are refused before its claim counts an attempt each pass and
    is marked as needing a person after `max_attempts`, while an order abandoned after it, in
    another namespace, completes in the first pass."""
    tables = _tables(shop)
    _abandon(shop, "refused", "broken-1", at=T0, **tables)
    _abandon(shop, "plain", "good-1", at=T0 + 1, **tables)
    connect, table = connector(shop.database.url)
    completer = Completer(
        completing, connect=connect, table=table, max_attempts=2, clock=ManualClock(LATER)
    )

    passes = [completer.run_once() for _ in range(3)]

    assert [(p.completed, p.failed, p.needs_attention) for p in passes] == [
        (1, 1, 0),
        (0, 0, 1),
        (0, 0, 0),
    ]
    (row,) = completer.find("broken-1")
    assert (row.attempts, row.attention_at is not None) == (2, True)
    assert row.last_error == "ConfigurationError: An operation needs at least one phase."
    assert _statuses(shop, tables["orders"])["good-1"] == "done"


@pytest.mark.parametrize("shop", ["postgres"], indirect=True)  # psycopg: a read opens a transaction
def test_b30_a_builder_that_leaves_a_transaction_open_is_an_attempt_that_says_why(
    shop: Shop,
) -> None:
    """On connections not in autocommit, a builder's read leaves a transaction open: that
    attempt fails with an error that says so, and the pass still completes the next order."""
    tables = _tables(shop)
    _abandon(shop, "cards", "order-1", at=T0, **tables)
    _abandon(shop, "plain", "good-1", at=T0 + 1, **tables)
    completer = Completer(
        completing,
        connect=shop.database.connect,  # psycopg.connect(dsn): not in autocommit
        table=shop.database.table,
        clock=ManualClock(LATER),
    )

    done = completer.run_once()

    assert (done.completed, done.failed) == (1, 1)
    (row,) = completer.find("order-1")
    assert row.attempts == 1
    assert row.last_error is not None
    assert "builder of namespace 'cards' left a transaction open" in row.last_error
    assert _statuses(shop, tables["orders"]) == {"order-1": "reserved", "good-1": "done"}


@pytest.mark.parametrize("shop", ["postgres"], indirect=True)  # a trigger that refuses one record
def test_b30_a_database_error_of_one_operation_is_logged_and_the_pass_goes_on(
    shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    """A database error in one operation's claim (a trigger refuses its record) is logged with
    its key, counts no attempt, and the pass completes the order after it; once the cause is
    gone the next pass completes the first one too."""
    database = shop.database
    tables = _tables(shop)
    stuck = _abandon(shop, "plain", "stuck-1", at=T0, **tables)
    _abandon(shop, "plain", "good-1", at=T0 + 1, **tables)
    function = database.create_table("rs_iso_unused", "id TEXT")  # a unique name, dropped after
    database.execute(
        f"CREATE FUNCTION {function}_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'record refused'; END $$"
    )
    database.execute(
        f'CREATE TRIGGER {function}_trigger BEFORE UPDATE ON "{database.table}" FOR EACH ROW '
        f"WHEN (OLD.id = '{stuck.digest()}') EXECUTE FUNCTION {function}_refuse()"
    )
    connect, table = connector(database.url)
    completer = Completer(completing, connect=connect, table=table, clock=ManualClock(LATER))
    try:
        with caplog.at_level(logging.WARNING, logger="retrysafe.completer"):
            done = completer.run_once()
        assert (done.completed, done.failed) == (1, 1)
        assert "Completing 'stuck-1' (scope 'tenant-a', namespace 'plain') failed" in caplog.text
        (row,) = completer.find("stuck-1")
        assert row.attempts == 0  # the database's error, not the operation's
    finally:
        database.execute(f'DROP TRIGGER {function}_trigger ON "{database.table}"')
        database.execute(f"DROP FUNCTION {function}_refuse()")

    assert completer.run_once().completed == 1
    assert _statuses(shop, tables["orders"]) == {"stuck-1": "done", "good-1": "done"}
