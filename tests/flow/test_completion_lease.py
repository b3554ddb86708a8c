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
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import anyio
import pytest

from retrysafe import Identity, InFlightError, Record, State, open_async_store, open_store
from retrysafe._decorator import idempotent
from tests.conftest import fresh_store_url
from tests.flow.conftest import WAIT_SECONDS, wait_until
from tests.flow.test_dead_connections import BlackholeRelay, _Sink

LEASE = 6.0
"""The lease: renewed every 2 s, each renewal within 1 s, its wait for a new connection
included (with a shorter lease, a loaded machine's new connections missed that bound)."""
NAMESPACE = "tests.completion-lease"
# The holder's reply timeout: longer than the lease, as the defaults are (30 s, 80 s), so a
# completion stuck on a dead connection outlasts the lease unless the lease is renewed.
HOLDER_OPTIONS = "read_timeout=8"


class DeafRelay(BlackholeRelay):
    """A `BlackholeRelay` whose existing connections can also go deaf (`deafen`): what the
    client sends reaches the server, the server's replies are lost, without a FIN or a reset."""

    def __init__(self, host: str, port: int) -> None:
        self._deaf: set[object] = set()
        super().__init__(host, port)

    def deafen(self) -> None:
        """Drop, from now on, every reply on each connection relayed so far."""
        with self._lock:
            self._deaf |= self._pairs

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        if source is pair[1]:  # the server's replies
            sink = cast(socket.socket, _Sink(self._deaf, sink, pair))
        super()._pump(source, sink, pair)


@pytest.fixture(params=["postgres", "mysql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, DeafRelay]]:
    """A fresh store on PostgreSQL or MariaDB: its URL through a `DeafRelay` (with the holder's
    options), its direct URL, and the relay."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        relay = cast(DeafRelay, DeafRelay.before(url))
        try:
            yield relay.url(url, HOLDER_OPTIONS), url, relay
        finally:
            relay.close()


def _record(records: list[Record]) -> Record:
    """The one record of key "k" among `records`."""
    (record,) = [record for record in records if record.identity.key == "k"]
    return record


def _events(caplog: pytest.LogCaptureFixture, event: str) -> int:
    """How many times `event` was logged (`fenced`, `lease_lapsed`)."""
    events = [getattr(record, "retrysafe_event", None) for record in caplog.records]
    return events.count(event)


@pytest.mark.parametrize("cut", ["blackhole", "deafen"])
def test_b16_a_sync_completion_stuck_on_a_dead_connection_keeps_its_lease(
    urls: tuple[str, str, DeafRelay], cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's connections go dead (or deaf: the completion lands, its reply is lost) as
    its function returns: its completion waits its read timeout, longer than the lease, but the
    lease is renewed meanwhile on new connections, so past the first lease a duplicate through
    another store is refused as in flight. The outcome is then held and stored (B19), replayed,
    and the function ran once; a renewal that found it stored logged no fencing, nor a lapse."""
    relayed, direct, relay = urls
    caplog.set_level(logging.WARNING, logger="retrysafe")
    holder, rival = open_store(relayed), open_store(direct)
    runs: list[str] = []
    results: list[int] = []

    @idempotent(holder, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    def charge(key: str) -> int:
        runs.append(key)
        getattr(relay, cut)()
        return len(runs)

    @idempotent(rival, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    def charge_again(key: str) -> int:
        runs.append(key)
        return len(runs)

    worker = threading.Thread(target=lambda: results.append(charge("k")))
    try:
        worker.start()
        wait_until(lambda: runs)
        first = _record(rival.list_records())
        wait_until(lambda: rival.clock.now() > first.lease_expires_at + 0.2)
        assert worker.is_alive()  # still completing
        if cut == "blackhole":
            with pytest.raises(InFlightError):
                charge_again("k")
        else:  # the completion landed, only its reply was lost: a replay
            assert charge_again("k") == 1
        worker.join(WAIT_SECONDS)
        assert results == [1]
        wait_until(lambda: _record(rival.list_records()).state is State.DONE)
        assert charge_again("k") == 1
        assert runs == ["k"]
        assert _events(caplog, "fenced") == _events(caplog, "lease_lapsed") == 0
    finally:
        worker.join(WAIT_SECONDS)
        holder.close()
        rival.close()


@pytest.mark.parametrize("cut", ["blackhole", "deafen"])
@pytest.mark.anyio
async def test_b16_an_async_completion_stuck_on_a_dead_connection_keeps_its_lease(
    urls: tuple[str, str, DeafRelay], cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The async twin: the heartbeat renews while the completion waits on a dead (or deaf)
    connection, so a duplicate past the first lease is refused as in flight; the outcome is
    held, stored and replayed, the function ran once, and no fencing nor lapse was logged."""
    relayed, direct, relay = urls
    caplog.set_level(logging.WARNING, logger="retrysafe")
    holder, rival = open_async_store(relayed), open_async_store(direct)
    runs: list[str] = []
    results: list[int] = []
    ran = anyio.Event()

    @idempotent(holder, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    async def charge(key: str) -> int:
        runs.append(key)
        getattr(relay, cut)()
        ran.set()
        return len(runs)

    @idempotent(rival, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    async def charge_again(key: str) -> int:
        runs.append(key)
        return len(runs)

    async def run() -> None:
        results.append(await charge("k"))

    async def record() -> Record:
        return _record(await rival.list_records())

    try:
        with anyio.fail_after(WAIT_SECONDS):
            async with anyio.create_task_group() as group:
                group.start_soon(run)
                await ran.wait()
                first = await record()
                await anyio.sleep(max(0.0, first.lease_expires_at - rival.clock.now()) + 0.2)
                assert not results  # still completing
                if cut == "blackhole":
                    with pytest.raises(InFlightError):
                        await charge_again("k")
                else:  # the completion landed, only its reply was lost: a replay
                    assert await charge_again("k") == 1
            assert results == [1]
            stored = await rival.wait(Identity(NAMESPACE, "", "k"), timeout=WAIT_SECONDS)
            assert stored is not None
            assert stored.state is State.DONE
            assert await charge_again("k") == 1
        assert runs == ["k"]
        assert _events(caplog, "fenced") == _events(caplog, "lease_lapsed") == 0
    finally:
        await holder.aclose()
        await rival.aclose()
