"""B16: what a renewal may take, and what its failures tell, on real stores.

- A renewal waits for a pooled connection no longer than its own bound (`renewal_timeout`: the
  read timeout or a sixth of the lease, whichever is shorter), not the pool's `pool_timeout`:
  with the pool's connections all held (here the only one, by a call stuck on a connection the
  network silently dropped), it fails in time for the next one to be tried before the lease
  ends. PostgreSQL and MariaDB, both faces.
- The lease-lapse watch of an async operation counts from the last renewal that landed, not the
  last one tried: a lease whose renewals keep failing (the store unreachable) is reported lapsed
  (`lease_lapsed`) once it has gone unrenewed longer than itself, and once only. Redis,
  PostgreSQL and MariaDB, through a relay that is cut.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest

from retrysafe import Identity, StoreUnavailableError, open_async_store, open_store
from retrysafe._decorator import idempotent
from tests.conftest import fresh_store_url
from tests.flow.conftest import WAIT_SECONDS, Gap
from tests.flow.test_dead_connections import BlackholeRelay

LEASE = 3.0
"""The lease renewed: each renewal bound to half a second, a sixth of it."""
NAMESPACE = "tests.renewal-bounds"
# One pooled connection, a reply timeout longer than the lease and a pool timeout longer still.
POOL_OPTIONS = "pool_max=1&read_timeout=5&pool_timeout=10"
# Far more than the renewal's bound, far less than the call that holds the pool takes.
WITHIN = 2.0


@pytest.fixture(params=["postgres", "mysql"])
def one_connection(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, BlackholeRelay]]:
    """A fresh store on PostgreSQL or MariaDB with a pool of one connection: its URL through a
    `BlackholeRelay`, and the relay."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        relay = cast(BlackholeRelay, BlackholeRelay.before(url))
        try:
            yield relay.url(url, POOL_OPTIONS), relay
        finally:
            relay.close()


def test_b16_a_sync_renewal_waits_for_a_pooled_connection_only_within_its_bound(
    one_connection: tuple[str, BlackholeRelay],
) -> None:
    """With the pool's only connection held by a call stuck on a dead connection (for the
    read timeout, longer than the lease), a renewal fails within its bound, not after the
    pool timeout or once the stuck call lets go."""
    url, relay = one_connection
    store = open_store(url)
    identity = Identity(NAMESPACE, "", "k")
    claim = store.claim(identity, "f", lease=LEASE, retention=60)
    relay.blackhole()

    def hold() -> None:
        with contextlib.suppress(StoreUnavailableError):
            store.list_records()

    busy = threading.Thread(target=hold)
    try:
        busy.start()
        time.sleep(0.3)  # it holds the connection now
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.renew(identity, claim.token, lease=LEASE)
        assert time.monotonic() - started < WITHIN
    finally:
        busy.join(WAIT_SECONDS)
        store.close()


@pytest.mark.anyio
async def test_b16_an_async_renewal_waits_for_a_pooled_connection_only_within_its_bound(
    one_connection: tuple[str, BlackholeRelay],
) -> None:
    """The async twin: the renewal fails within its bound while a stuck call holds the pool."""
    url, relay = one_connection
    store = open_async_store(url)
    identity = Identity(NAMESPACE, "", "k")

    async def hold() -> None:
        with contextlib.suppress(StoreUnavailableError):
            await store.list_records()

    try:
        claim = await store.claim(identity, "f", lease=LEASE, retention=60)
        await store.get(identity)  # the pooled connection is open, then dropped by the network
        relay.blackhole()
        with anyio.fail_after(WAIT_SECONDS):
            async with anyio.create_task_group() as group:
                group.start_soon(hold)
                await anyio.sleep(0.3)  # it holds the connection now
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError):
                    await store.renew(identity, claim.token, lease=LEASE)
                assert time.monotonic() - started < WITHIN
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_b16_a_lease_whose_renewals_keep_failing_is_reported_lapsed_once(
    gap: Gap, caplog: pytest.LogCaptureFixture
) -> None:
    """The store becomes unreachable as the operation starts and stays so longer than the
    lease: every renewal fails, and the lease is reported lapsed once, counted from the claim;
    the store back, the outcome is stored."""
    caplog.set_level(logging.WARNING, logger="retrysafe")
    lease = 1.5
    store = open_async_store(gap.url)

    @idempotent(store, key="key", namespace=NAMESPACE, lease=lease, wait=0)
    async def charge(key: str) -> int:
        gap.relay.cut()
        await anyio.sleep(lease + 0.8)
        gap.relay.restore()
        return 1

    try:
        with anyio.fail_after(WAIT_SECONDS):
            assert await charge("k") == 1
        events = [getattr(record, "retrysafe_event", None) for record in caplog.records]
        assert events.count("renew_failed") >= 2
        assert events.count("lease_lapsed") == 1
        gap.wait_for_done("k")
    finally:
        await store.aclose()
