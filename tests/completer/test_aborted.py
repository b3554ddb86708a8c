"""A phase that caught a database error and went on, its PostgreSQL transaction aborted, is
refused with `TransactionAbortedError` when a registered operation runs it, by its client or by
the completer, instead of committing nothing (B29, B30)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import pytest

from retrysafe import Identity, ManualClock
from retrysafe.completer import Completer, PhaseFunction, Registry, Step
from retrysafe.transactions import TransactionAbortedError
from tests.completer.conftest import Shop

registry = Registry()


@registry.operation("swallowing")
def swallowing(request: bytes, connection: Any) -> Mapping[str, PhaseFunction]:
    """An order whose finish phase catches a failed statement's error and answers anyway."""
    spec = json.loads(request)

    def reserve(step: Step) -> None:
        connection.execute(f"INSERT INTO {spec['orders']} VALUES (%s, 'reserved')", (spec["key"],))  # noqa: S608 - a test table

    def finish(step: Step) -> bytes:
        statement = f"UPDATE {spec['orders']} SET status = 'done' WHERE key = %s"  # noqa: S608 - a test table
        connection.execute(statement, (spec["key"],))
        # The transaction is aborted after this: nothing of it can commit.
        with contextlib.suppress(psycopg.errors.DivisionByZero):
            connection.execute("SELECT 1 / 0")
        return b"done"

    return {"reserve": reserve, "finish": finish}


@pytest.mark.parametrize("shop", ["postgres"], indirect=True)  # SQLite does not abort
def test_b30_a_phase_that_left_its_transaction_aborted_is_refused_by_client_and_completer(
    shop: Shop,
) -> None:
    """The client's run raises `TransactionAbortedError` at the finish phase; the completer's
    attempt at it fails with the same error, kept on the operation; the order stays reserved."""
    database = shop.database
    orders = database.create_table("rs_abort_orders", "key TEXT PRIMARY KEY, status TEXT")
    request = json.dumps({"key": "order-1", "orders": orders}).encode()
    conn = psycopg.connect(database.dsn, autocommit=True)
    try:
        with pytest.raises(TransactionAbortedError):
            registry.run(
                conn, Identity("swallowing", "tenant-a", "order-1"), request, table=database.table
            )
    finally:
        conn.close()
    completer = Completer(
        registry,
        connect=lambda: psycopg.connect(database.dsn, autocommit=True),
        table=database.table,
        clock=ManualClock(time.time() + 600),
    )

    assert completer.run_once().failed == 1

    (row,) = completer.find("order-1")
    assert row.last_error is not None
    assert row.last_error.startswith("TransactionAbortedError: ")
    assert database.execute(f"SELECT status FROM {orders}") == [("reserved",)]  # noqa: S608
