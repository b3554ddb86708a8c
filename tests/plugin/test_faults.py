"""The fault-injecting transports: retrysafe's client retries through them, the server runs once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.client import AsyncIdempotentTransport, IdempotentTransport, RetryPolicy
from retrysafe.demo._relay import serve_asgi
from retrysafe.testing import AsyncFaultyTransport, Fault, FaultyTransport, RunCounter
from retrysafe.wsgi import IdempotencyMiddleware as WSGIIdempotencyMiddleware

AUTH = {"Authorization": "Bearer alice"}
FAST = RetryPolicy(wait_initial=0.01, wait_max=0.05)
EVERY_FAULT = [Fault.LOSE_RESPONSE, Fault.TIMEOUT, Fault.RESET]


def flask_payments(charges: RunCounter) -> Flask:
    """A Flask app that counts each charge it makes."""
    app = Flask("payments")

    @app.post("/payments")
    def pay() -> tuple[dict[str, int], int]:
        charges.increment()
        return {"charged": charges.count}, 201

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def test_every_fault_is_retried_and_the_wsgi_server_charges_once(tmp_path: Path) -> None:
    """A lost response, a timeout and a reset in a row: the client retries with one key, the
    server behind the middleware charges once and the last attempt gets the replay."""
    charges = RunCounter()
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    app = WSGIIdempotencyMiddleware(flask_payments(charges).wsgi_app, store=store)
    faulty = FaultyTransport(httpx.WSGITransport(app=app), EVERY_FAULT)
    client = httpx.Client(transport=IdempotentTransport(faulty, policy=FAST), base_url="http://t")
    with client:
        response = client.post("/payments", json={"amount": 100}, headers=AUTH)
    store.close()
    assert (response.status_code, response.json()) == (201, {"charged": 1})
    assert response.headers["Idempotent-Replayed"] == "true"
    assert response.extensions["retrysafe_attempts"] == 4
    assert charges.count == 1
    assert [(f.fault, f.reached_server) for f in faulty.injected] == [
        (Fault.LOSE_RESPONSE, True),
        (Fault.TIMEOUT, False),
        (Fault.RESET, False),
    ]
    assert faulty.pending == 0


def test_a_lost_response_without_idempotency_charges_twice() -> None:
    """The fault is real: retried without the middleware, the lost response costs a charge."""
    charges = RunCounter()
    faulty = FaultyTransport(
        httpx.WSGITransport(app=flask_payments(charges).wsgi_app), [Fault.LOSE_RESPONSE]
    )
    client = httpx.Client(transport=IdempotentTransport(faulty, policy=FAST), base_url="http://t")
    with client:
        assert client.post("/payments", json={}, headers=AUTH).status_code == 201
    assert charges.count == 2


def test_faults_go_only_to_the_requests_when_selects() -> None:
    """`when` picks the requests that take a fault; the others pass and leave the schedule."""
    charges = RunCounter()
    faulty = FaultyTransport(
        httpx.WSGITransport(app=flask_payments(charges).wsgi_app),
        [None, Fault.RESET],
        when=lambda request: request.method == "POST",
    )
    with httpx.Client(transport=faulty, base_url="http://t") as client:
        assert client.get("/health").status_code == 200
        assert client.post("/payments", json={}).status_code == 201
        with pytest.raises(httpx.ConnectError, match="connection reset by peer before sending"):
            client.post("/payments", json={})
    assert charges.count == 1


@pytest.mark.anyio
async def test_async_faults_over_a_real_http_server_charge_once(tmp_path: Path) -> None:
    """Over real HTTP (uvicorn), the async transports lose, time out and reset; the async
    client retries and the ASGI server charges once."""
    charges = RunCounter()

    async def pay(request: Request) -> JSONResponse:
        charges.increment()
        return JSONResponse({"amount": (await request.json())["amount"]}, status_code=201)

    store = open_async_store(f"sqlite:///{tmp_path / 'store.db'}")
    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/payments", pay, methods=["POST"])]), store=store
    )
    with serve_asgi(app) as base_url:
        faulty = AsyncFaultyTransport(httpx.AsyncHTTPTransport(), EVERY_FAULT)
        transport = AsyncIdempotentTransport(faulty, policy=FAST)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            response = await client.post("/payments", json={"amount": 5}, headers=AUTH)
    await store.aclose()
    assert (response.status_code, response.json()) == (201, {"amount": 5})
    assert response.headers["Idempotent-Replayed"] == "true"
    assert charges.count == 1
    assert len(faulty.injected) == 3


@pytest.fixture
def anyio_backend() -> str:
    """The async tests run on asyncio."""
    return "asyncio"
