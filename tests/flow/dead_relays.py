"""Real stores behind a relay whose existing connections go silently dead on demand (no FIN, no
reset: a NAT or firewall state expired), and the charges the dead-connection tests race on one
key: a holder's through the relay, a rival's straight to the server.

`BlackholeRelay.blackhole()` drops every byte of the connections relayed so far, both ways;
its `deafen()` drops only their replies (what the client sends still lands). New connections
flow either way. `relayed_urls` is the fixture of a fresh store behind one; `Charges` builds
the decorated charges (sync and async), counts the effect's runs and reads the key's record.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import anyio
import pytest

from retrysafe import AsyncStore, Record, Store
from retrysafe._decorator import idempotent
from tests.conftest import fresh_store_url
from tests.flow.conftest import wait_until
from tests.flow.relay import Relay

__all__ = ["BlackholeRelay", "Charges", "events", "relayed_urls"]

KEY = "k"
"""The one key every charge here is for."""


class _Sink:
    """One side of a relayed connection that drops what is sent to it once its pair is in one
    of the `dropped` sets (dead, or deaf on the replies' side)."""

    def __init__(self, dropped: tuple[set[object], ...], sock: socket.socket, pair: object) -> None:
        self._dropped, self._sock, self._pair = dropped, sock, pair

    def sendall(self, data: bytes) -> None:
        """Forward `data`, unless the connection is dropped: then it is lost in the network."""
        if not any(self._pair in dropped for dropped in self._dropped):
            self._sock.sendall(data)


class BlackholeRelay(Relay):
    """A relay whose existing connections can go silently dead (`blackhole`): their bytes are
    dropped both ways; or deaf (`deafen`): what the client sends reaches the server, the
    server's replies are lost. Either without a FIN or a reset, while new connections flow."""

    def __init__(self, host: str, port: int) -> None:
        self._dead: set[object] = set()
        self._deaf: set[object] = set()
        super().__init__(host, port)

    def blackhole(self) -> None:
        """Drop, from now on, every byte of each connection relayed so far."""
        with self._lock:
            self._dead |= self._pairs

    def deafen(self) -> None:
        """Drop, from now on, every reply on each connection relayed so far."""
        with self._lock:
            self._deaf |= self._pairs

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        replies = source is pair[1]  # the server's side of the pair
        dropped = (self._dead, self._deaf) if replies else (self._dead,)
        super()._pump(source, cast(socket.socket, _Sink(dropped, sink, pair)), pair)


def relayed_urls(options: str) -> Callable[..., Iterator[tuple[str, str, BlackholeRelay]]]:
    """A fixture (assign it to a test module's name): a fresh store on PostgreSQL or MariaDB,
    its URL through a `BlackholeRelay` (with the holder's `options` added), its direct URL, and
    the relay."""

    @pytest.fixture(params=["postgres", "mysql"])
    def urls(
        request: pytest.FixtureRequest, tmp_path: Path
    ) -> Iterator[tuple[str, str, BlackholeRelay]]:
        with fresh_store_url(str(request.param), request, tmp_path) as url:
            relay = cast(BlackholeRelay, BlackholeRelay.before(url))
            try:
                yield relay.url(url, options), url, relay
            finally:
                relay.close()

    return urls


def events(caplog: pytest.LogCaptureFixture, event: str) -> int:
    """How many times `event` was logged (`fenced`, `renew_failed`, ...)."""
    logged = [getattr(record, "retrysafe_event", None) for record in caplog.records]
    return logged.count(event)


def _nothing() -> None:
    """What a charge does by default besides counting its run."""


@dataclass
class Charges:
    """Charges of `KEY` in `namespace`, with `lease` and no wait, each through the store it is
    given: `runs` lists the keys the effect ran for, `results` what the holder's charge
    returned (each charge returns how many runs there were, its own included)."""

    namespace: str
    lease: float
    runs: list[str] = field(default_factory=list)
    results: list[int] = field(default_factory=list)

    def charge(self, store: Store, during: Callable[[], object] = _nothing) -> Callable[[str], int]:
        """The charge through `store`: counts its run, then calls `during` before it returns."""

        @idempotent(store, key="key", namespace=self.namespace, lease=self.lease, wait=0)
        def charge(key: str) -> int:
            self.runs.append(key)
            during()
            return len(self.runs)

        return charge

    def acharge(
        self, store: AsyncStore, during: Callable[[], Awaitable[object]] | None = None
    ) -> Callable[[str], Awaitable[int]]:
        """The async charge through `store`: counts its run, then awaits `during` (if given)
        before it returns."""

        @idempotent(store, key="key", namespace=self.namespace, lease=self.lease, wait=0)
        async def charge(key: str) -> int:
            self.runs.append(key)
            if during is not None:
                await during()
            return len(self.runs)

        return charge

    def in_thread(self, charge: Callable[[str], int]) -> threading.Thread:
        """A thread (not started) that runs `charge` of `KEY`, its result kept in `results`."""
        return threading.Thread(target=lambda: self.results.append(charge(KEY)))

    async def collect(self, charge: Callable[[str], Awaitable[int]]) -> None:
        """Run the async `charge` of `KEY`, its result kept in `results`."""
        self.results.append(await charge(KEY))

    async def race(
        self,
        charge: Callable[[str], Awaitable[int]],
        ran: anyio.Event,
        meanwhile: Callable[[], Awaitable[None]],
    ) -> None:
        """Run the holder's async `charge` of `KEY` in a task group, its result kept in
        `results`; once `ran` is set (by its effect), await `meanwhile` (the rival's moves)
        while it runs on; return when both are done."""
        async with anyio.create_task_group() as group:
            group.start_soon(self.collect, charge)
            await ran.wait()
            await meanwhile()

    def record_of(self, records: list[Record]) -> Record:
        """The one record of `KEY` among `records`."""
        (record,) = [record for record in records if record.identity.key == KEY]
        return record

    def wait_past_lease(self, rival: Store, margin: float = 0.0) -> None:
        """Wait (bounded) until `rival`'s clock is `margin` past the lease `KEY` has now."""
        first = self.record_of(rival.list_records())
        wait_until(lambda: rival.clock.now() > first.lease_expires_at + margin)

    async def past_lease(self, rival: AsyncStore, margin: float) -> None:
        """Sleep until `rival`'s clock is `margin` past the lease `KEY` has now."""
        first = self.record_of(await rival.list_records())
        await anyio.sleep(max(0.0, first.lease_expires_at - rival.clock.now()) + margin)
