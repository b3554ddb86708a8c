"""A console served by uvicorn over a store on SQLite or PostgreSQL, holding records made by real
requests through the ASGI middleware, one stuck claim and one expired record."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import Identity, ManualClock, Store, open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.console import create_app
from tests.conftest import fresh_store_url
from tests.servers import AsgiServer

TOKEN = "console-test-token-0123456789"
BIG = 10_000  # bytes of the large payment's note: more than the preview shows
STUCK = Identity("jobs", "worker-7", "nightly-report")
EXPIRED = Identity("jobs", "worker-7", "old-report")


@dataclass(frozen=True)
class Console:
    """A running console: its URL, the store's URL, and the records the app's requests made."""

    url: str
    store_url: str
    keys: tuple[str, ...]  # the Idempotency-Keys of the payments sent through the middleware

    def client(self, *, token: bool = True) -> httpx.Client:
        """An HTTP client of the console, with the bearer token unless `token` is False."""
        headers = {"authorization": f"Bearer {TOKEN}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, trust_env=False, timeout=10)


async def _payments(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"id": f"pay_{body['customer']}", **body}, status_code=201)


def _send_payments(store_url: str) -> tuple[str, ...]:
    """POST payments through the middleware on a real server; the store keeps their records."""
    store = open_async_store(store_url)
    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/payments", _payments, methods=["POST"])]), store=store
    )
    server = AsgiServer(app, on_close=store.aclose)
    keys = ("order-1", "order-2", "order-big")
    try:
        with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
            for key in keys:
                note = "x" * BIG if key == "order-big" else "thanks"
                payment = {"customer": key, "amount": 1999, "note": note}
                headers = {"authorization": "Bearer tenant-a", "idempotency-key": f'"{key}"'}
                for _ in range(2):  # the second is a replay
                    response = client.post("/payments", json=payment, headers=headers)
                    assert response.status_code == 201, response.text
    finally:
        server.stop()
    return keys


def _stuck_and_expired(store_url: str) -> None:
    """Claim STUCK two minutes ago with a 5 s lease and never complete it; store EXPIRED with a
    retention that ended an hour ago."""
    now = time.time()
    store = open_store(store_url, clock=ManualClock(now - 120))
    try:
        store.claim(STUCK, "fp-stuck", lease=5, retention=3600)
    finally:
        store.close()
    store = open_store(store_url, clock=ManualClock(now - 7200))
    try:
        claim = store.claim(EXPIRED, "fp-old", lease=5, retention=60)
        store.complete(EXPIRED, claim.token, b"old", retention=60)
    finally:
        store.close()


@pytest.fixture
def clock() -> ManualClock:
    """The time the console's sessions and kept overview end by (the store's clock)."""
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> Iterator[Store]:
    """A real in-memory store on a clock the test moves (a module may give its own)."""
    with contextlib.closing(open_store("memory://", clock=clock)) as opened:
        yield opened


@pytest.fixture(params=["sqlite", "postgres"])
def console(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Console]:
    """The console over a fresh store on each backend, with the records above in it."""
    with fresh_store_url(str(request.param), request, tmp_path) as store_url:
        keys = _send_payments(store_url)
        _stuck_and_expired(store_url)
        store = open_store(store_url)
        server = AsgiServer(create_app(store, TOKEN))
        try:
            yield Console(server.url, store_url, keys)
        finally:
            server.stop()
            store.close()
