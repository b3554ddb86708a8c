"""Held outcomes (B19, B40) against real stores: each reached through a relay that can be cut.

`gap` is a fresh Redis, PostgreSQL or MySQL store behind a `Relay`: `gap.url` goes through it
(with short timeouts), and `gap.records(key)` reads the real server directly, gap or not.
`ChargeApp` is an app (ASGI and WSGI) whose effect counts its runs and can cut the relay right
after one, from inside the handler: between the effect and the storing of its outcome.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from retrysafe import Record, State, Store, open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.flow.relay import Relay
from tests.integrations.servers import AsgiServer, WsgiServer

WAIT_SECONDS = 30.0
"""The bound on every wait for something to happen (a completion landing, a lease ending)."""
_TIMEOUTS = {
    "redis": "socket_timeout=1&connect_timeout=1",
    "postgres": "connect_timeout=1&pool_timeout=1&read_timeout=1",
    "mysql": "connect_timeout=1&pool_timeout=1&read_timeout=1",
}


def wait_until(condition: Callable[[], object], seconds: float = WAIT_SECONDS) -> None:
    """Poll `condition` until it holds, at most `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@dataclass
class Gap:
    """A real store behind a relay: `url` through it, `direct_url` around it."""

    relay: Relay
    url: str
    direct_url: str
    _direct: Store | None = None

    def records(self, key: str) -> list[Record]:
        """Return the live records of `key`, read from the real server (gap or not)."""
        if self._direct is None:
            self._direct = open_store(self.direct_url)
        return [r for r in self._direct.list_records(limit=1000) if r.identity.key == key]

    def state(self, key: str) -> State | None:
        """Return the state of `key`'s record, None if there is none."""
        found = self.records(key)
        return found[0].state if found else None

    def lose(self, key: str) -> Record:
        """Delete `key`'s record on the real server, as a store that loses data would (Redis
        restarted without persistence, a failover to a replica behind); return it."""
        (record,) = self.records(key)
        assert self._direct is not None
        assert self._direct.delete(record.identity)
        return record

    def wait_for_done(self, key: str) -> Record:
        """Wait (bounded) until `key`'s outcome is stored; return its record."""
        wait_until(lambda: self.state(key) is State.DONE)
        (record,) = self.records(key)
        return record

    def now(self) -> float:
        """Return the direct store's clock."""
        self.records("")
        assert self._direct is not None
        return self._direct.clock.now()

    def close(self) -> None:
        """Close the direct store and the relay."""
        if self._direct is not None:
            self._direct.close()
        self.relay.close()


@pytest.fixture(params=["redis", "postgres", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each real backend that runs on a server: Redis, PostgreSQL, MySQL (MariaDB)."""
    return str(request.param)


@pytest.fixture
def gap(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gap]:
    """A fresh store on `backend`, reached through a relay that can be cut."""
    with fresh_store_url(backend, request, tmp_path) as url:
        relay = Relay.before(url)
        opened = Gap(relay, relay.url(url, _TIMEOUTS[backend]), url)
        try:
            yield opened
        finally:
            opened.close()


@dataclass
class ChargeApp:
    """An app whose effect counts its runs; `after_effect` is called once, right after the
    next effect, inside the handler. `on_shutdown` runs at the ASGI lifespan shutdown."""

    runs: int = 0
    after_effect: Callable[[], None] | None = None
    on_shutdown: Callable[[], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def effect(self) -> bytes:
        """Run the effect; return the response body."""
        with self._lock:
            self.runs += 1
            runs, after, self.after_effect = self.runs, self.after_effect, None
        if after is not None:
            after()
        return json.dumps({"charge": runs}).encode()

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        """The ASGI face: lifespan, and 201 with the effect's body."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            if self.on_shutdown is not None:
                self.on_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = self.effect()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def wsgi(self, environ: Any, start_response: Any) -> list[bytes]:
        """The WSGI face: 201 with the effect's body."""
        body = self.effect()
        start_response("201 Created", [("Content-Type", "application/json")])
        return [body]


@dataclass
class Served:
    """An app behind the middleware on a real server, its store through the gap's relay."""

    app: ChargeApp
    middleware: Any
    server: AsgiServer | WsgiServer
    client: httpx.Client

    @property
    def counters(self) -> dict[str, int]:
        """The middleware's counters."""
        return dict(self.middleware.counters.snapshot())

    def post(self, key: str = "k") -> httpx.Response:
        """POST a charge with `key`."""
        return self.client.post("/charge", headers={"Idempotency-Key": key}, content=b"{}")


@pytest.fixture
def serve(gap: Gap) -> Iterator[Callable[..., Served]]:
    """A factory: `ChargeApp` behind the `face` ("asgi" on uvicorn, "wsgi" on wsgiref)
    middleware with `options`, its store through the gap's relay."""
    started: list[tuple[Served, Any]] = []

    def start(face: str, *, lifespan: str = "off", **options: Any) -> Served:
        app = ChargeApp()
        server: AsgiServer | WsgiServer
        if face == "asgi":
            astore = open_async_store(gap.url)
            middleware: Any = AsgiMiddleware(app.asgi, store=astore, **options)
            server = AsgiServer(middleware, lifespan=lifespan, on_close=astore.aclose)
            store: Any = None
        else:
            store = open_store(gap.url)
            middleware = WsgiMiddleware(app.wsgi, store=store, **options)
            server = WsgiServer(middleware)
        # One caller for every request: its credential is what scopes the keys (B8).
        client = httpx.Client(
            base_url=server.url, timeout=15, headers={"Authorization": "Bearer flow-tests"}
        )
        served = Served(app, middleware, server, client)
        started.append((served, store))
        return served

    yield start
    for served, store in started:
        served.client.close()
        served.server.stop()
        if store is not None:
            store.close()
