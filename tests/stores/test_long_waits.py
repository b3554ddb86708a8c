"""A wait longer than any socket timeout a driver takes (B15): with a timeout of 30 days, every
store's `wait` still returns once the holder's lease lapses, on the real clock. (redis-py's
pub/sub refused a read timeout above about 24.9 days with `OverflowError`.)"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator

import pytest
from anyio.from_thread import start_blocking_portal

from retrysafe import Identity, State, Store, open_store
from tests.stores.conftest import BlockingFacade, _open_async

THIRTY_DAYS = 30 * 86400.0


@pytest.fixture
def real_time_store(store_url: str, face: str) -> Iterator[Store]:
    """A store of each backend and face, on the system clock (leases lapse for real)."""
    with contextlib.ExitStack() as stack:
        if face == "sync":
            store = open_store(store_url)
        else:
            portal = stack.enter_context(start_blocking_portal())
            store = BlockingFacade(portal.call(_open_async, store_url, None), portal)  # type: ignore[assignment]
        try:
            yield store
        finally:
            store.close()


def test_b15_a_thirty_day_wait_returns_when_the_lease_lapses(real_time_store: Store) -> None:
    """A claim with a half-second lease, never completed: `wait(timeout=30 days)` returns the
    record, still in flight with its lease over, about half a second later."""
    identity = Identity("test", "tenant", f"long-wait-{uuid.uuid4().hex}")
    claim = real_time_store.claim(identity, "fp", lease=0.5, retention=60)
    assert claim.acquired
    started = time.monotonic()
    record = real_time_store.wait(identity, timeout=THIRTY_DAYS)
    assert time.monotonic() - started < 10
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.lease_expires_at <= time.time()
