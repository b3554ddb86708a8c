"""The completer only takes over the live record of the operation it found (B30): an operation
whose record expired or was deleted is never started again from its first phase, and a
takeover keeps the expiry horizon the application chose."""

from __future__ import annotations

import pytest

from retrysafe import Identity, State
from retrysafe._clock import ManualClock
from retrysafe._errors import ConfigurationError
from retrysafe.completer import Completer
from tests.completer import orders
from tests.completer.conftest import Shop

DAY = 86_400.0


def _blocked_run(shop: Shop, key: str, clock: ManualClock, *, retention: float) -> None:
    """Run order `key` as a client whose finish phase fails: reserve and charge committed."""
    database = shop.database
    blocker = database.create_table("rs_block", "reason TEXT")
    database.execute(f"INSERT INTO {blocker} VALUES ('stock check')")  # noqa: S608 - a test table
    request = orders.request_of(key, blocker=blocker, **shop.spec())
    conn = database.connect()
    try:
        with pytest.raises(RuntimeError, match="blocked"):
            orders.registry.run(
                conn,
                Identity("orders", "tenant-a", key),
                request,
                table=database.table,
                lease=1.0,
                retention=retention,
                clock=clock,
            )
    finally:
        conn.close()
    database.execute(f"DELETE FROM {blocker}")  # noqa: S608 - the cause is fixed now


def test_b30_expired_operation_is_not_restarted(shop: Shop) -> None:
    """An operation whose record passed its retention is skipped by a pass and refused by
    `retry`: its charge is not made again under a new foreign key."""
    clock = ManualClock()
    key = "order-expired"
    _blocked_run(shop, key, clock, retention=10.0)
    assert shop.provider.created == 1
    clock.advance(30.0)  # past the lease and the retention
    completer = Completer(
        orders.registry, connect=shop.database.connect, table=shop.database.table, clock=clock
    )
    with pytest.raises(ConfigurationError, match="expired or was deleted"):
        completer.retry(Identity("orders", "tenant-a", key))
    done = completer.run_once()
    assert done.completed == 0
    assert shop.provider.created == 1  # no second charge
    assert shop.phases_logged(key) == ["charge", "reserve"]
    assert shop.record(key) is None  # not created again
    assert shop.resumable_rows() == 0  # the orphan row is dropped


def test_b30_takeover_keeps_the_applications_retention(shop: Shop) -> None:
    """App retention 7 days, completer 1 day: finished on day 0.5, the record is still there
    on day 2, so a client retry replays instead of charging again."""
    clock = ManualClock()
    key = "order-week"
    _blocked_run(shop, key, clock, retention=7 * DAY)
    clock.advance(DAY / 2)
    completer = Completer(
        orders.registry,
        connect=shop.database.connect,
        table=shop.database.table,
        clock=clock,
        retention=DAY,
    )
    assert completer.run_once().completed == 1
    clock.advance(1.5 * DAY)
    store = shop.database.store(clock=clock)
    try:
        record = store.get(Identity("orders", "tenant-a", key))
    finally:
        store.close()
    assert record is not None
    assert record.state is State.DONE
    assert shop.provider.created == 1
