"""B16 when the network silently drops a store's connections while an operation runs longer
than its lease (a NAT or firewall state expired, an address moved: no FIN, no reset, and new
connections still work): the renewal stuck on a dead connection is cut at its bound, a sixth
of the lease, and tried again soon on a new one, so the claim holds, a duplicate is refused as
in flight, and the effect runs once. Real PostgreSQL and MariaDB, both faces, through a relay
whose existing connections go dead on demand (`BlackholeRelay`).
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

from retrysafe import InFlightError, Record, open_async_store, open_store
from retrysafe._decorator import idempotent
from tests.conftest import fresh_store_url
from tests.flow.conftest import WAIT_SECONDS, wait_until
from tests.flow.relay import Relay

LEASE = 3.0
"""The lease of the operation: renewed at 1 s, its renewal bound half a second."""
NAMESPACE = "tests.dead-connections"
# The holder's own reply timeout: longer than the lease, as the defaults are (30 s, 80 s), yet
# short enough that a test that fails (a call stuck on a dead connection) ends soon.
HOLDER_OPTIONS = "read_timeout=5"


class _Sink:
    """One side of a relayed connection that drops what is sent to it once its pair is dead."""

    def __init__(self, dead: set[object], sock: socket.socket, pair: object) -> None:
        self._dead, self._sock, self._pair = dead, sock, pair

    def sendall(self, data: bytes) -> None:
        """Forward `data`, unless the connection is dead: then it is lost in the network."""
        if self._pair not in self._dead:
            self._sock.sendall(data)


class BlackholeRelay(Relay):
    """A relay whose existing connections can go silently dead (`blackhole`): their bytes are
    dropped both ways, without a FIN or a reset, while new connections flow."""

    def __init__(self, host: str, port: int) -> None:
        self._dead: set[object] = set()
        super().__init__(host, port)

    def blackhole(self) -> None:
        """Drop, from now on, every byte of each connection relayed so far."""
        with self._lock:
            self._dead |= self._pairs

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        super()._pump(source, cast(socket.socket, _Sink(self._dead, sink, pair)), pair)


@pytest.fixture(params=["postgres", "mysql"])
def urls(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, str, BlackholeRelay]]:
    """A fresh store on PostgreSQL or MariaDB: its URL through a `BlackholeRelay` (with the
    holder's options), its direct URL, and the relay."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        relay = BlackholeRelay.before(url)
        try:
            yield relay.url(url, HOLDER_OPTIONS), url, relay
        finally:
            relay.close()


def _record(records: list[Record]) -> Record:
    """The one record of key "k" among `records`."""
    (record,) = [record for record in records if record.identity.key == "k"]
    return record


def _events(caplog: pytest.LogCaptureFixture, event: str) -> int:
    """How many times `event` was logged (`renew_failed`, `store_failed`)."""
    events = [getattr(record, "retrysafe_event", None) for record in caplog.records]
    return events.count(event)


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
    runs: list[str] = []
    results: list[int] = []

    @idempotent(holder, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    def charge(key: str) -> int:
        runs.append(key)
        started.set()
        assert finish.wait(WAIT_SECONDS)
        return len(runs)

    @idempotent(rival, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    def charge_again(key: str) -> int:
        runs.append(key)
        return len(runs)

    worker = threading.Thread(target=lambda: results.append(charge("k")))
    try:
        worker.start()
        assert started.wait(WAIT_SECONDS)
        relay.blackhole()
        first = _record(rival.list_records())
        wait_until(lambda: rival.clock.now() > first.lease_expires_at)
        with pytest.raises(InFlightError):
            charge_again("k")
        assert _record(rival.list_records()).lease_expires_at > rival.clock.now()
        assert _events(caplog, "renew_failed") >= 1
        finish.set()
        worker.join(WAIT_SECONDS)
        assert results == [1]
        assert _events(caplog, "store_failed") == 0
        assert charge_again("k") == 1
        assert runs == ["k"]
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
    runs: list[str] = []
    results: list[int] = []

    @idempotent(holder, key="key", namespace=NAMESPACE, lease=LEASE, wait=0)
    async def charge(key: str) -> int:
        runs.append(key)
        started.set()
        await finish.wait()
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
                await started.wait()
                relay.blackhole()
                first = await record()
                await anyio.sleep(max(0.0, first.lease_expires_at - rival.clock.now()) + 0.05)
                with pytest.raises(InFlightError):
                    await charge_again("k")
                assert (await record()).lease_expires_at > rival.clock.now()
                assert _events(caplog, "renew_failed") >= 1
                finish.set()
            assert results == [1]
            assert _events(caplog, "store_failed") == 0
        assert await charge_again("k") == 1
        assert runs == ["k"]
    finally:
        finish.set()
        await holder.aclose()
        await rival.aclose()
