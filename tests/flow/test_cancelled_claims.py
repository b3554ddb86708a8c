"""B28, B40: a call cancelled while its claim is in the store (`asyncio.timeout`, `wait_for`, a
task group, a server's shutdown) reads the claim's reply all the same; the operation never ran,
so a claim it acquired is released, and the call raises the cancellation: a retry runs at once.
Before, the cancellation cut the reply off: the store had applied the claim, the flow never
learnt its token, and the key stayed in flight for a whole lease, nothing logged.

Real Redis, PostgreSQL, MariaDB and SQLite, on asyncio and trio, the decorator and the ASGI
middleware. The order is proved, not slept for: a server's store is reached through a relay
that holds back the next reply (the server applied the claim; its caller waits), a SQLite
store has a clock whose next reading in the store's writer thread is held (the claim is in the
writer); the caller is cancelled there, then the store let go.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
import trio

from retrysafe import AsyncStore, Identity, SystemClock, open_async_store
from retrysafe._decorator import idempotent
from retrysafe.asgi import IdempotencyMiddleware
from tests.conftest import fresh_store_url
from tests.flow.conftest import WAIT_SECONDS
from tests.flow.relay import Relay

NAMESPACE = "tests.cancelled-claims"


class _Gate:
    """Holds back the next event after `hold()` (a reply, a clock reading) in the thread it
    comes on, and sets `held`, until `let_go()`; the events after it pass."""

    def __init__(self) -> None:
        self.held = threading.Event()
        self._armed = False
        self._go = threading.Event()
        self._go.set()
        self._gate = threading.Lock()

    def hold(self) -> None:
        """Hold back the next event."""
        with self._gate:
            self.held.clear()
            self._armed = True

    def let_go(self, *, hold_next: bool = False) -> None:
        """Let the held event go on; with `hold_next`, hold back the one after it."""
        with self._gate:
            go = self._go
            self._armed = hold_next
            self.held.clear()
        go.set()

    async def wait_held(self) -> None:
        """Wait (bounded) until an event is held."""
        assert await anyio.to_thread.run_sync(self.held.wait, WAIT_SECONDS)

    def _passing(self) -> None:
        with self._gate:
            if not self._armed:
                return
            self._armed = False
            go = self._go = threading.Event()
            self.held.set()
        go.wait(WAIT_SECONDS)


class _Replies:
    """The server's side of a relayed connection, whose replies pass through a gate."""

    def __init__(self, sock: socket.socket, gate: _Gate) -> None:
        self._sock, self._gate = sock, gate

    def recv(self, size: int) -> bytes:
        """Receive from the server; a reply held back waits here."""
        data = self._sock.recv(size)
        if data:
            self._gate._passing()
        return data


class _HoldingRelay(Relay, _Gate):
    """A relay to a store's server that can hold back the server's next reply."""

    def __init__(self, host: str, port: int) -> None:
        _Gate.__init__(self)
        Relay.__init__(self, host, port)

    def close(self) -> None:
        self.let_go()
        super().close()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        if source is pair[1]:  # the server's replies
            source = cast(socket.socket, _Replies(source, self))
        super()._pump(source, sink, pair)


class _HeldClock(SystemClock, _Gate):
    """The system clock, whose next reading on another thread than the test's (a SQLite
    store's writer or reader) can be held back: the store call is in the store's thread."""

    def __init__(self) -> None:
        _Gate.__init__(self)
        self._test_thread = threading.get_ident()

    def now(self) -> float:
        if threading.get_ident() != self._test_thread:
            self._passing()
        return super().now()


@dataclass
class Paused:
    """A fresh real store whose next reply (server) or write (SQLite) can be held (`gate`)."""

    url: str
    gate: _Gate
    clock: _HeldClock | None = None

    def open(self) -> AsyncStore:
        """Open the store (each test opens it in its own event loop)."""
        return open_async_store(self.url, clock=self.clock)


@pytest.fixture(params=["redis", "postgres", "mysql", "sqlite"])
def paused(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Paused]:
    """A fresh store on each real backend, with a gate."""
    backend = str(request.param)
    with fresh_store_url(backend, request, tmp_path) as url:
        if backend == "sqlite":
            clock = _HeldClock()
            yield Paused(url, clock, clock)
            clock.let_go()
            return
        relay = _HoldingRelay.before(url)
        try:
            yield Paused(relay.url(url), relay)
        finally:
            relay.close()


async def _ends_cancelled(call: asyncio.Task[Any]) -> None:
    await asyncio.wait((call,), timeout=WAIT_SECONDS)
    assert call.cancelled()


async def _records(store: AsyncStore, key: str) -> list[Any]:
    return [r for r in await store.list_records(limit=1000) if r.identity.key == key]


@pytest.mark.anyio
async def test_b28_a_call_cancelled_while_its_claim_is_in_the_store_releases_it(
    paused: Paused,
) -> None:
    """The caller is cancelled while the store holds its claim's reply: the call raises
    `CancelledError`, the function did not run, the key is free, and the retry runs it."""
    store = paused.open()
    runs: list[str] = []

    @idempotent(store, key="key", namespace=NAMESPACE, wait=0, lease=60)
    async def charge(key: str) -> int:
        runs.append(key)
        return len(runs)

    try:
        assert await charge("warm") == 1  # connections open, tables made
        paused.gate.hold()
        call = asyncio.create_task(charge("k"))
        await paused.gate.wait_held()
        call.cancel()
        paused.gate.let_go()
        await _ends_cancelled(call)
        assert runs == ["warm"]
        assert await store.get(Identity(NAMESPACE, "", "k")) is None
        assert await charge("k") == 2
        assert runs == ["warm", "k"]
    finally:
        await store.aclose()


async def _charge_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app: 201 and how many times it ran (`_CHARGES`)."""
    _CHARGES.append(scope["path"])
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(len(_CHARGES)).encode()})


_CHARGES: list[str] = []


@pytest.mark.anyio
async def test_b28_a_request_cancelled_while_its_claim_is_in_the_store_releases_it(
    paused: Paused,
) -> None:
    """The ASGI middleware: a request cancelled while the store holds its claim's reply (a
    timeout layer, a server's shutdown) ends cancelled, the app did not run, and the retry
    runs it."""
    store = paused.open()
    _CHARGES.clear()
    middleware = IdempotencyMiddleware(_charge_app, store=store, wait=0, lease=60)
    transport = httpx.ASGITransport(app=middleware)
    headers = {"Authorization": "Bearer cancelled-claims"}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:

            async def post(key: str) -> httpx.Response:
                return await client.post("/charge", headers={**headers, "Idempotency-Key": key})

            assert (await post("warm")).status_code == 201  # the scope secret, the tables
            paused.gate.hold()
            call = asyncio.create_task(post("k"))
            await paused.gate.wait_held()
            call.cancel()
            paused.gate.let_go()
            await _ends_cancelled(call)
            assert len(_CHARGES) == 1
            assert await _records(store, "k") == []
            retried = await post("k")
            assert (retried.status_code, retried.json()) == (201, 2)
    finally:
        await store.aclose()


@pytest.mark.anyio
async def test_b40_a_duplicate_waiting_for_the_call_in_flight_is_cancelled_at_once(
    paused: Paused,
) -> None:
    """Only the claim's own round trip outlasts a cancellation, not the wait for a duplicate:
    a duplicate cancelled inside its wait (its wait's first store call held) ends cancelled
    while the call in flight still runs, long before its `wait` of 60 s."""
    store = paused.open()
    entered, finish = asyncio.Event(), asyncio.Event()

    @idempotent(store, key="key", namespace=NAMESPACE, wait=60, lease=60)
    async def charge(key: str) -> str:
        entered.set()
        await finish.wait()
        return key

    try:
        first = asyncio.create_task(charge("k"))
        await asyncio.wait_for(entered.wait(), WAIT_SECONDS)
        paused.gate.hold()
        duplicate = asyncio.create_task(charge("k"))
        await paused.gate.wait_held()  # its claim: in flight
        paused.gate.let_go(hold_next=True)
        await paused.gate.wait_held()  # its wait's first call
        duplicate.cancel()
        paused.gate.let_go()
        await _ends_cancelled(duplicate)
        assert not first.done()
        finish.set()
        assert await first == "k"
    finally:
        paused.gate.let_go()
        finish.set()
        await store.aclose()


def test_b28_on_trio_a_call_cancelled_while_its_claim_is_in_the_store_releases_it(
    tmp_path: Path,
) -> None:
    """On trio (a cancel scope cancelled while the SQLite store's writer holds the claim): the
    function does not run, the key is free, and the retry runs it. Before, trio delivered the
    cancellation only at the next checkpoint: the function ran, its outcome was stored."""
    clock = _HeldClock()
    runs: list[str] = []
    ends: list[str] = []

    async def main() -> None:
        store = open_async_store(f"sqlite:///{tmp_path / 'trio.db'}?timeout=30", clock=clock)

        @idempotent(store, key="key", namespace=NAMESPACE, wait=0, lease=60)
        async def charge(key: str) -> int:
            runs.append(key)
            return len(runs)

        scope = trio.CancelScope()

        async def call() -> None:
            with scope:
                await charge("k")
                ends.append("returned")
            if scope.cancelled_caught:
                ends.append("cancelled")

        assert await charge("warm") == 1
        clock.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            assert await trio.to_thread.run_sync(clock.held.wait, WAIT_SECONDS)
            scope.cancel()
            clock.let_go()
        assert (ends, runs) == (["cancelled"], ["warm"])
        assert await store.get(Identity(NAMESPACE, "", "k")) is None
        assert await charge("k") == 2
        await store.aclose()

    try:
        trio.run(main)
    finally:
        clock.let_go()
