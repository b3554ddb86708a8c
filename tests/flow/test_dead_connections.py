"""B16 when the network silently drops a store's connections while an operation runs longer
than its lease (a NAT or firewall state expired, an address moved: no FIN, no reset, and new
connections still work): the renewal stuck on a dead connection is cut at its bound, a sixth
of the lease, and tried again soon on a new one, so the claim holds, a duplicate is refused as
in flight, and the effect runs once. Real PostgreSQL and MariaDB, both faces, through a relay
whose existing connections go dead on demand (`BlackholeRelay`).
"""

from __future__ import annotations

import logging
import threading

import anyio
import pytest

from retrysafe import InFlightError, open_async_store, open_store
from tests.flow.conftest import WAIT_SECONDS
from tests.flow.dead_relays import BlackholeRelay, Charges, events, relayed_urls

LEASE = 3.0
"""The lease of the operation: renewed at 1 s, its renewal bound half a second."""
NAMESPACE = "tests.dead-connections"
# The holder's own reply timeout: longer than the lease, as the defaults are (30 s, 80 s), yet
# short enough that a test that fails (a call stuck on a dead connection) ends soon.
HOLDER_OPTIONS = "read_timeout=5"

urls = relayed_urls(HOLDER_OPTIONS)
"""Each test's store, on PostgreSQL and on MariaDB, behind a relay that blackholes the
holder's connections: (relayed URL, direct URL, relay)."""


def test_b16_a_sync_renewal_on_a_dead_connection_is_cut_and_tried_again_in_time(
    urls: tuple[str, str, BlackholeRelay], caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's connections go dead as its function starts: its first renewal fails at
    its bound, the next one, a ninth of the lease later on a new connection, lands, so past
    the first lease a duplicate through another store is refused as in flight; the result is
    stored at once (the dead connections were replaced), and replayed: the function ran once."""
    relayed, direct, relay = urls
    caplog.set_level(logging.ERROR, logger="retrysafe")
    holder, rival = open_store(relayed), open_store(direct)
    started, finish = threading.Event(), threading.Event()
    charges = Charges(NAMESPACE, LEASE)

    def hold() -> None:
        started.set()
        assert finish.wait(WAIT_SECONDS)

    charge_again = charges.charge(rival)
    worker = charges.in_thread(charges.charge(holder, hold))
    try:
        worker.start()
        assert started.wait(WAIT_SECONDS)
        relay.blackhole()
        charges.wait_past_lease(rival)
        with pytest.raises(InFlightError):
            charge_again("k")
        assert charges.record_of(rival.list_records()).lease_expires_at > rival.clock.now()
        assert events(caplog, "renew_failed") >= 1
        finish.set()
        worker.join(WAIT_SECONDS)
        assert charges.results == [1]
        assert events(caplog, "store_failed") == 0
        assert charge_again("k") == 1
        assert charges.runs == ["k"]
    finally:
        finish.set()
        worker.join(WAIT_SECONDS)
        holder.close()
        rival.close()


@pytest.mark.anyio
async def test_b16_an_async_renewal_on_a_dead_connection_is_cut_and_tried_again_in_time(
    urls: tuple[str, str, BlackholeRelay], caplog: pytest.LogCaptureFixture
) -> None:
    """The async twin: the heartbeat's renewal is cut at its bound and tried again soon, so a
    duplicate past the first lease is refused as in flight; the result is stored at once (the
    batching connection was replaced too), and the function runs once."""
    relayed, direct, relay = urls
    caplog.set_level(logging.ERROR, logger="retrysafe")
    holder, rival = open_async_store(relayed), open_async_store(direct)
    started, finish = anyio.Event(), anyio.Event()
    charges = Charges(NAMESPACE, LEASE)

    async def hold() -> None:
        started.set()
        await finish.wait()

    charge_again = charges.acharge(rival)

    async def meanwhile() -> None:
        relay.blackhole()
        await charges.past_lease(rival, 0.05)
        with pytest.raises(InFlightError):
            await charge_again("k")
        assert charges.record_of(await rival.list_records()).lease_expires_at > rival.clock.now()
        assert events(caplog, "renew_failed") >= 1
        finish.set()

    try:
        with anyio.fail_after(WAIT_SECONDS):
            await charges.race(charges.acharge(holder, hold), started, meanwhile)
            assert charges.results == [1]
            assert events(caplog, "store_failed") == 0
        assert await charge_again("k") == 1
        assert charges.runs == ["k"]
    finally:
        finish.set()
        await holder.aclose()
        await rival.aclose()
