"""What an operation reports is its own: a decorated call nobody observes inside an observed
request, and the scope secret loaded for the request's first use of the store, report nothing
into the request's operation; a WSGI body streamed past the storable size ends its operation
only once it was sent, so how it ended (stored, B22) is reported.

Real stores (memory, SQLite, Redis on a port where nothing listens), the middleware driven in
process (httpx's ASGI transport, a WSGI call, Flask's test client).
"""

from __future__ import annotations

import io
import logging
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import flask
import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import retrysafe
from retrysafe import open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.integrations.flask import Idempotency
from retrysafe.observe import Observer, Operation
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.observe.metrics import Metrics
from tests.servers import refused_port

CREDENTIAL: Final = "Bearer bounds-caller"
CHUNK: Final = 400  # two of them pass the storable size below
MAX_RESPONSE: Final = 500


class Ended(Observer):
    """Keeps every operation its face ended, and each one's results as `finished` saw them."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []
        self.results: list[str | None] = []

    def finished(self, operation: Operation) -> None:
        self.results.append(operation.result)

    def ended(self, operation: Operation) -> None:
        self.operations.append(operation)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def asgi_client(app: AsgiMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bounds")


async def post(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await client.post("/pay", json={}, headers={"Idempotency-Key": key, **headers})


@pytest.mark.anyio
async def test_b18_b26_an_unobserved_decorated_call_keeps_out_of_the_requests_operation() -> None:
    """A handler calls a decorated function without observers, then answers 500: the
    request's operation keeps its own key and ends `released` (B18), as its claim did; the
    decorated call's stored outcome (B26) is not counted under the request's face."""
    inner_store = open_async_store("memory://")

    @retrysafe.idempotent(inner_store, key="order", namespace="charges")
    async def charge(order: str) -> str:
        return order

    async def pay(request: Request) -> JSONResponse:
        await charge("inner-order-1")
        return JSONResponse({"error": "downstream"}, status_code=500)

    ended, metrics = Ended(), Metrics(CollectorRegistry())
    app = AsgiMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
        store=open_async_store("memory://"),
        observers=[ended, metrics.observer],
    )
    key = f"outer-{uuid.uuid4()}"
    async with asgi_client(app) as client:
        assert (await post(client, key, Authorization=CREDENTIAL)).status_code == 500
        assert (await post(client, key, Authorization=CREDENTIAL)).status_code == 500  # ran again

    operations = [(op.namespace, op.key, op.result) for op in ended.operations]
    assert operations == [("http", key, "released")] * 2
    assert ended.results == ["released", "released"]
    assert metrics.outcomes("asgi") == {"released": 2}


@pytest.mark.anyio
async def test_b8_b20_loading_the_scope_secret_keeps_the_requests_identity_and_counts_its_calls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A process whose store is down from its start: each 503 (B20) is the request's, not the
    scope secret's (B8) -- no operation, log record or span names the secret's record -- and
    the secret's failed claims are counted as store errors."""
    ended, metrics = Ended(), Metrics(CollectorRegistry())

    async def pay(request: Request) -> JSONResponse:
        raise AssertionError("never run while the store is down")

    app = AsgiMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
        store=open_async_store(f"redis://127.0.0.1:{refused_port()}/15"),
        observers=[ended, metrics.observer],
    )
    with caplog.at_level(logging.DEBUG, logger="retrysafe.decisions"):
        async with asgi_client(app) as client:
            for key in ("order-1", "order-2"):
                assert (await post(client, key, Authorization=CREDENTIAL)).status_code == 503
    assert [(op.namespace, op.key, op.decision) for op in ended.operations] == [
        ("", "", "unavailable")
    ] * 2
    records = [r for r in caplog.records if r.name == "retrysafe.decisions"]
    assert len(records) == 2
    for record in records:
        assert "scope-secret" not in record.getMessage()
        assert record.__dict__["idempotency_key"] == ""
    assert metrics.decisions("asgi") == {"unavailable": 2}
    assert metrics.store_errors() == {"claim": 2}


@pytest.mark.anyio
async def test_b8_a_first_request_refused_before_its_claim_is_not_the_scope_secrets() -> None:
    """The first request of a process, refused for its key (B8's secret loaded meanwhile),
    reports neither the secret's namespace nor its key; the next one executes as its own."""
    ended = Ended()

    async def pay(request: Request) -> JSONResponse:
        return JSONResponse({"ok": 1}, status_code=201)

    app = AsgiMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
        store=open_async_store("memory://"),
        observers=[ended],
    )
    async with asgi_client(app) as client:
        assert (await post(client, "bad key", Authorization=CREDENTIAL)).status_code == 400
        assert (await post(client, "good-1", Authorization=CREDENTIAL)).status_code == 201
    assert [(op.namespace, op.key, op.decision, op.result) for op in ended.operations] == [
        ("", "", "invalid", None),
        ("http", "good-1", "execute", "stored"),
    ]


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("201 Created", [("Content-Type", "text/plain")])
    return [b"x" * CHUNK, b"y" * CHUNK]


def _wsgi_post(app: WsgiMiddleware, key: str) -> tuple[list[str], bytes]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/stream",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "bounds",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(b"{}"),
        "CONTENT_LENGTH": "2",
        "CONTENT_TYPE": "application/json",
        "HTTP_IDEMPOTENCY_KEY": key,
        "HTTP_AUTHORIZATION": CREDENTIAL,
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        return statuses, b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'bounds.db'}"
    open_store(url).close()
    return url


def test_b22_a_streamed_wsgi_response_reports_its_stored_outcome(sqlite_url: str) -> None:
    """A WSGI response past the storable size streams; once sent, its outcome is stored
    (B22) and reported: `finished` says stored, and the operation ends after that."""
    ended, metrics = Ended(), Metrics(CollectorRegistry())
    store = open_store(sqlite_url)
    app = WsgiMiddleware(
        _wsgi_app, store=store, observers=[ended, metrics.observer], max_response_size=MAX_RESPONSE
    )
    key = str(uuid.uuid4())
    try:
        assert _wsgi_post(app, key) == (["201 Created"], b"x" * CHUNK + b"y" * CHUNK)
        assert _wsgi_post(app, key)[0] == ["410 Gone"]  # the "response not stored" outcome
    finally:
        store.close()
    assert ended.results == ["stored"]
    assert [(op.key, op.decision, op.result) for op in ended.operations] == [
        (key, "execute", "stored"),
        (key, "replay", None),
    ]
    assert metrics.outcomes("wsgi") == {"stored": 1}


def test_b22_a_streamed_flask_response_reports_its_stored_outcome(sqlite_url: str) -> None:
    """The Flask extension's streamed response past the storable size: the same (B22)."""
    ended = Ended()
    app = flask.Flask(__name__)
    store = open_store(sqlite_url)
    Idempotency(app, store=store, observers=[ended], max_response_size=MAX_RESPONSE)

    @app.post("/stream")
    def stream() -> flask.Response:
        return flask.Response((b"z" * CHUNK for _ in range(3)), mimetype="text/plain")

    key = str(uuid.uuid4())
    try:
        response = app.test_client().post(
            "/stream", data=b"{}", headers={"Idempotency-Key": key, "Authorization": CREDENTIAL}
        )
        assert (response.status_code, len(response.get_data())) == (200, 3 * CHUNK)
        response.close()
    finally:
        store.close()
    assert ended.results == ["stored"]
    operations = [(op.key, op.decision, op.result) for op in ended.operations]
    assert operations == [(key, "execute", "stored")]
