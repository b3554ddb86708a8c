"""A fault-injecting HTTP relay: responses lost after the upstream applied the request.

Clients keep connections alive, so faults are decided per request, not per TCP connection.
For each request the relay forwards it to the upstream, waits for the whole answer (the
upstream has applied the request by then), and then, from a seeded random draw:

- loses the response (probability `loss`). `lost_as="disconnect"` (the default) closes the
  connection without answering: the client sees "server disconnected without sending a
  response", as when a proxy, a load balancer or the server process dies after the write
  committed. `lost_as="timeout"` holds the answer back until the client gives up (its read
  timeout) and hangs up, as when the response packets vanish; it costs the client its timeout.
- otherwise delays the response (probability `delay`, by `delay_min_seconds` to
  `delay_seconds`) or delivers it at once. A client whose timeout ends during the delay hangs
  up; that response is counted as abandoned (the request was applied, the answer never seen).

    plan = FaultPlan(loss=0.3, delay=0.1, seed=7)
    with serve_asgi(app) as upstream, serve_relay(upstream, plan) as relay:
        httpx.post(f"{relay.url}/payments", ...)
        relay.counters.lost  # how many responses were dropped

With a seed, each request's fate is the same from run to run in arrival order (three draws per
request); concurrent clients can arrive in a different order. `serve_asgi` and `serve_relay`
run uvicorn on a loopback port in a background thread, so they work from sync and async code.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import anyio
import httpx
import uvicorn

from retrysafe._errors import ConfigurationError
from retrysafe._http.asgi_io import run_lifespan
from retrysafe.proxy import HOP_BY_HOP_HEADERS

__all__ = ["FaultPlan", "FaultRelay", "Relay", "RelayCounters", "serve_asgi", "serve_relay"]

logger = logging.getLogger("retrysafe.relay")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Any  # Callable[[], Awaitable[Message]]; uvicorn's own types are private
Send = Any  # Callable[[Message], Awaitable[None]]
ASGIApp = Any  # any ASGI 3 application


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What the relay does to responses.

    Attributes:
        loss: the probability that a response is lost after the upstream applied the request.
        lost_as: how a lost response looks to the client: `"disconnect"` (the connection closes
            without an answer) or `"timeout"` (no answer until the client hangs up).
        delay: the probability that a delivered response is delayed.
        delay_seconds: the longest delay.
        delay_min_seconds: the shortest delay; each is drawn uniformly between the two.
        seed: the seed of the random draws; None draws differently on each run.
        hold_max: in `"timeout"` mode, the longest a lost response is held before the relay
            closes the connection itself.
        upstream_timeout: the seconds the relay waits for the upstream before answering 502.
    """

    loss: float = 0.0
    lost_as: Literal["disconnect", "timeout"] = "disconnect"
    delay: float = 0.0
    delay_seconds: float = 0.1
    delay_min_seconds: float = 0.0
    seed: int | None = None
    hold_max: float = 30.0
    upstream_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not (0.0 <= self.loss <= 1.0 and 0.0 <= self.delay <= 1.0):
            raise ConfigurationError("loss and delay are probabilities between 0 and 1")
        if self.lost_as not in ("disconnect", "timeout"):
            raise ConfigurationError('lost_as is "disconnect" or "timeout"')
        if min(self.delay_min_seconds, self.hold_max, self.upstream_timeout) < 0:
            raise ConfigurationError("durations cannot be negative")
        if self.delay_seconds < self.delay_min_seconds:
            raise ConfigurationError("delay_seconds cannot be below delay_min_seconds")


@dataclass(slots=True)
class RelayCounters:
    """What the relay did so far; live, updated by the relay as requests pass.

    Attributes:
        received: requests that arrived from clients.
        forwarded: requests the upstream answered (so it has applied them).
        delivered: responses that reached the client (delayed ones included).
        lost: responses dropped after the upstream answered.
        delayed: responses held back for a delay (delivered late, or abandoned).
        abandoned: delayed responses whose client hung up first (its timeout ended).
        upstream_errors: requests the upstream did not answer (the client got 502).
    """

    received: int = 0
    forwarded: int = 0
    delivered: int = 0
    lost: int = 0
    delayed: int = 0
    abandoned: int = 0
    upstream_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        """Return the counters as a plain dict (a copy)."""
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Fate:
    lost: bool
    delay: float | None


class FaultRelay:
    """The relay as an ASGI app, forwarding every HTTP request to `upstream`.

    Losing a response as a disconnect needs uvicorn (the server `serve_relay` uses): the app
    closes the client's connection through uvicorn's transport. Elsewhere it falls back to
    `"timeout"` behaviour.

    Args:
        upstream: the base URL requests are forwarded to (`http://127.0.0.1:8000`).
        plan: the faults to inject.
        counters: where to count what happened; a new `RelayCounters` if None.
    """

    def __init__(
        self, upstream: str, plan: FaultPlan = FaultPlan(), *, counters: RelayCounters | None = None
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.plan = plan
        self.counters = counters if counters is not None else RelayCounters()
        self._rng = random.Random(plan.seed)  # noqa: S311 -- fault injection, not a secret
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope."""
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send, self.aclose)
        elif scope["type"] == "http":
            await self._relay(scope, receive, send)

    async def aclose(self) -> None:
        """Close the connections to the upstream."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _draw(self) -> _Fate:
        # Always three draws, so one request's fate does not shift the next one's.
        lost = self._rng.random() < self.plan.loss
        delayed = self._rng.random() < self.plan.delay
        seconds = self._rng.uniform(self.plan.delay_min_seconds, self.plan.delay_seconds)
        return _Fate(lost=lost, delay=seconds if delayed and not lost else None)

    async def _relay(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.counters.received += 1
        fate = self._draw()
        body = await _read_body(receive)
        try:
            status, headers, content = await self._forward(scope, body)
        except httpx.HTTPError as error:
            self.counters.upstream_errors += 1
            logger.warning("upstream %s did not answer: %r", self.upstream, error)
            await _respond(send, 502, [(b"content-type", b"text/plain")], b"upstream failed\n")
            return
        self.counters.forwarded += 1
        if fate.lost:
            self.counters.lost += 1
            await self._lose(receive, send)
            return
        if fate.delay is not None:
            self.counters.delayed += 1
            if await _hung_up_within(receive, fate.delay):
                self.counters.abandoned += 1
                return
        # Counted before sending, so a client that has its answer also sees it counted.
        self.counters.delivered += 1
        await _respond(send, status, headers, content)

    async def _forward(
        self, scope: Scope, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.plan.upstream_timeout, trust_env=False, follow_redirects=False
            )
        target = self.upstream + (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.lower() not in HOP_BY_HOP_HEADERS and name.lower() != b"host"
        ]
        # A Request built by hand, so the client adds no default headers of its own.
        request = httpx.Request(scope["method"], target, headers=headers, content=body)
        response = await self._client.send(request, stream=True)
        try:
            content = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        # The relay answers with the whole body at once, so its length is known; a HEAD answer
        # keeps the upstream's Content-Length (of the body it would have sent).
        head = scope["method"] == "HEAD"
        answer = [
            (name, value)
            for name, value in response.headers.raw
            if name.lower() not in HOP_BY_HOP_HEADERS
            and (head or name.lower() != b"content-length")
        ]
        if not head:
            answer.append((b"content-length", str(len(content)).encode()))
        return response.status_code, answer, content

    async def _lose(self, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if self.plan.lost_as == "disconnect" and transport is not None:
            transport.close()
        # Wait for uvicorn to see the client gone, so it does not answer 500 in our place.
        with anyio.move_on_after(self.plan.hold_max):
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if transport is not None:
            transport.close()
            with anyio.move_on_after(1.0):
                while (await receive())["type"] != "http.disconnect":
                    pass


async def _hung_up_within(receive: Receive, seconds: float) -> bool:
    """Wait `seconds`; return True as soon as the client hangs up meanwhile."""
    with anyio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass
        return True
    return False


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True, slots=True)
class Relay:
    """A running relay.

    Attributes:
        url: its base URL (`http://127.0.0.1:PORT`), to use in place of the upstream's.
        counters: what it did so far (live).
        plan: the faults it injects.
    """

    url: str
    counters: RelayCounters
    plan: FaultPlan = field(default_factory=FaultPlan)


@contextmanager
def serve_asgi(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["auto", "on", "off"] = "auto",
    startup_timeout: float = 10.0,
) -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread; yield its base URL.

    Args:
        app: any ASGI 3 application.
        host: the address to listen on (loopback by default).
        port: the port; 0 picks a free one.
        lifespan: uvicorn's lifespan setting.
        startup_timeout: the most seconds to wait for the server to start.
    """
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without
    # it, Nagle's algorithm and delayed ACKs add some 40 ms to every response.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(
        app,
        log_config=None,
        log_level="warning",
        access_log=False,
        lifespan=lifespan,
        http="h11",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="retrysafe-uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.005)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
        sock.close()


@contextmanager
def serve_relay(
    upstream: str, plan: FaultPlan = FaultPlan(), *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[Relay]:
    """Run a `FaultRelay` in front of `upstream` on a loopback port; yield the running `Relay`.

    Args:
        upstream: the base URL of the service to relay to.
        plan: the faults to inject.
        host: the address to listen on.
        port: the port; 0 picks a free one.
    """
    app = FaultRelay(upstream, plan)
    with serve_asgi(app, host=host, port=port, lifespan="on") as url:
        yield Relay(url=url, counters=app.counters, plan=plan)
