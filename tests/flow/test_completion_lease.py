"""B16, B18: a completion keeps its lease renewed until it returns, so a completion stuck on a
connection the network silently dropped (no FIN, no reset: a NAT or firewall state expired)
never lets the lease lapse while the effect's outcome is on its way: a retry meanwhile is
refused as in flight, never run again. When that completion fails at its read timeout, the
outcome is held and stored on a new connection (B19). A renewal that finds the outcome already
stored is no lost claim (B17): nothing is logged or counted as fenced. Real PostgreSQL and
MariaDB, both faces, through a relay whose existing connections go dead on demand.
"""

from __future__ import annotations

import logging

import anyio
import pytest

from retrysafe import Identity, InFlightError, State, open_async_store, open_store
from tests.flow.conftest import WAIT_SECONDS, wait_until
from tests.flow.dead_relays import BlackholeRelay, Charges, events, relayed_urls

LEASE = 6.0
"""The lease: renewed every 2 s, each renewal within 1 s, its wait for a new connection
included (with a shorter lease, a loaded machine's new connections missed that bound)."""
NAMESPACE = "tests.completion-lease"
# The holder's reply timeout: longer than the lease, as the defaults are (30 s, 80 s), so a
# completion stuck on a dead connection outlasts the lease unless the lease is renewed.
HOLDER_OPTIONS = "read_timeout=8"

urls = relayed_urls(HOLDER_OPTIONS)
"""Each test's store, on PostgreSQL and on MariaDB, behind a relay that blackholes or deafens
the holder's connections: (relayed URL, direct URL, relay)."""


@pytest.mark.parametrize("cut", ["blackhole", "deafen"])
def test_b16_a_sync_completion_stuck_on_a_dead_connection_keeps_its_lease(
    urls: tuple[str, str, BlackholeRelay], cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's connections go dead (or deaf: the completion lands, its reply is lost) as
    its function returns: its completion waits its read timeout, longer than the lease, but the
    lease is renewed meanwhile on new connections, so past the first lease a duplicate through
    another store is refused as in flight. The outcome is then held and stored (B19), replayed,
    and the function ran once; a renewal that found it stored logged no fencing, nor a lapse."""
    relayed, direct, relay = urls
    caplog.set_level(logging.WARNING, logger="retrysafe")
    holder, rival = open_store(relayed), open_store(direct)
    charges = Charges(NAMESPACE, LEASE)
    charge_again = charges.charge(rival)
    worker = charges.in_thread(charges.charge(holder, getattr(relay, cut)))
    try:
        worker.start()
        wait_until(lambda: charges.runs)
        charges.wait_past_lease(rival, 0.2)
        assert worker.is_alive()  # still completing
        if cut == "blackhole":
            with pytest.raises(InFlightError):
                charge_again("k")
        else:  # the completion landed, only its reply was lost: a replay
            assert charge_again("k") == 1
        worker.join(WAIT_SECONDS)
        assert charges.results == [1]
        wait_until(lambda: charges.record_of(rival.list_records()).state is State.DONE)
        assert charge_again("k") == 1
        assert charges.runs == ["k"]
        assert events(caplog, "fenced") == events(caplog, "lease_lapsed") == 0
    finally:
        worker.join(WAIT_SECONDS)
        holder.close()
        rival.close()


@pytest.mark.parametrize("cut", ["blackhole", "deafen"])
@pytest.mark.anyio
async def test_b16_an_async_completion_stuck_on_a_dead_connection_keeps_its_lease(
    urls: tuple[str, str, BlackholeRelay], cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The async twin: the heartbeat renews while the completion waits on a dead (or deaf)
    connection, so a duplicate past the first lease is refused as in flight; the outcome is
    held, stored and replayed, the function ran once, and no fencing nor lapse was logged."""
    relayed, direct, relay = urls
    caplog.set_level(logging.WARNING, logger="retrysafe")
    holder, rival = open_async_store(relayed), open_async_store(direct)
    charges = Charges(NAMESPACE, LEASE)
    ran = anyio.Event()

    async def cut_then_tell() -> None:
        getattr(relay, cut)()
        ran.set()

    charge_again = charges.acharge(rival)

    async def meanwhile() -> None:
        await charges.past_lease(rival, 0.2)
        assert not charges.results  # still completing
        if cut == "blackhole":
            with pytest.raises(InFlightError):
                await charge_again("k")
        else:  # the completion landed, only its reply was lost: a replay
            assert await charge_again("k") == 1

    try:
        with anyio.fail_after(WAIT_SECONDS):
            await charges.race(charges.acharge(holder, cut_then_tell), ran, meanwhile)
            assert charges.results == [1]
            stored = await rival.wait(Identity(NAMESPACE, "", "k"), timeout=WAIT_SECONDS)
            assert stored is not None
            assert stored.state is State.DONE
            assert await charge_again("k") == 1
        assert charges.runs == ["k"]
        assert events(caplog, "fenced") == events(caplog, "lease_lapsed") == 0
    finally:
        await holder.aclose()
        await rival.aclose()
