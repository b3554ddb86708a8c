"""B18: another retrysafe layer's 409 is not an outcome: one retrysafe layer behind another.

The outer middleware (namespace "edge") wraps an inner one (namespace "orders") in one real
uvicorn server; a request marked `X-Direct` goes to the inner layer alone. While a direct
request holds a key, the same key through both layers gets the inner layer's 409
`request-in-flight`: the outer layer must release its claim, not keep that 409 as the key's
outcome, so the retry after the direct request ended replays its 201. An app's own 409 is its
outcome, with `Retry-After` or without: stored, and in transactional mode committed with the
handler's writes (released, those would be rolled back while the client is told of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flask
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import open_async_store
from retrysafe._http import ResponseCapture, Settings, outcome_to_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.transactions.flask import install, transactional
from tests.servers import AsgiServer

_SECONDS = 10.0
_HEADERS = {"Authorization": "Bearer layered"}


class _Gate:
    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.calls = 0


def _layered(gate: _Gate, store_path: Path) -> Any:
    async def orders(request: Request) -> Response:
        gate.calls += 1
        gate.entered.set()
        await asyncio.to_thread(gate.open.wait, _SECONDS)
        return JSONResponse({"n": gate.calls}, status_code=201)

    store = open_async_store(f"sqlite:///{store_path}")
    inner = IdempotencyMiddleware(
        Starlette(routes=[Route("/orders", orders, methods=["POST"])]),
        store=store,
        namespace="orders",
        wait=0,
    )
    outer = IdempotencyMiddleware(inner, store=store, namespace="edge", wait=0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        direct = scope["type"] == "http" and (b"x-direct", b"1") in scope["headers"]
        await (inner if direct else outer)(scope, receive, send)

    return app


@pytest.fixture
def layered(tmp_path: Path) -> Iterator[tuple[str, _Gate]]:
    gate = _Gate()
    server = AsgiServer(_layered(gate, tmp_path / "store.db"))
    try:
        yield server.url, gate
    finally:
        gate.open.set()
        server.stop()


def test_b18_inner_request_in_flight_409_is_not_stored_by_the_outer_middleware(
    layered: tuple[str, _Gate],
) -> None:
    """The outer middleware releases on the inner's transient 409; the retry gets the 201."""
    url, gate = layered
    headers = {**_HEADERS, "Idempotency-Key": "layered-1"}
    answers: list[httpx.Response] = []
    direct = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{url}/orders", json={}, headers={**headers, "X-Direct": "1"}, timeout=30)
        )
    )
    direct.start()
    assert gate.entered.wait(_SECONDS)
    busy = httpx.post(f"{url}/orders", json={}, headers=headers, timeout=30)
    assert busy.status_code == 409
    assert busy.headers.get("retry-after")
    gate.open.set()
    direct.join(_SECONDS)
    assert answers[0].status_code == 201
    retry = httpx.post(f"{url}/orders", json={}, headers=headers, timeout=30)
    assert retry.status_code == 201, retry.text
    assert retry.json() == answers[0].json()
    assert gate.calls == 1


def _capture(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> ResponseCapture:
    capture = ResponseCapture(1024)
    capture.start(status, headers)
    capture.add(body)
    capture.complete = True
    return capture


_PROBLEM = [(b"content-type", b"application/problem+json")]


@pytest.mark.parametrize(
    ("headers", "body", "stored"),
    [
        pytest.param([(b"Retry-After", b"1")], b"busy", True, id="app-409-retry-after"),
        pytest.param(
            [*_PROBLEM, (b"Retry-After", b"1")],
            b'{"type":"https://x.example/#seat-taken"}',
            True,
            id="app-problem-retry-after",
        ),
        pytest.param(
            _PROBLEM,
            b'{"type":"https://errors.example/idem#request-in-flight","status":409}',
            False,
            id="problem-any-base-url",
        ),
        pytest.param(
            _PROBLEM,
            b'{"type":"https://errors.example/problems/request-in-flight","status":409}',
            False,
            id="problem-path",
        ),
        pytest.param(_PROBLEM, b'{"type":"https://x.example/#key-mismatch"}', True, id="other"),
        pytest.param(_PROBLEM, b"not json", True, id="unreadable-problem"),
        pytest.param([], b'{"type":"x#request-in-flight"}', True, id="not-a-problem"),
        pytest.param([], b"conflict", True, id="plain-409"),
    ],
)
def test_b18_a_layers_409_is_released_and_an_apps_own_stored(
    headers: list[tuple[bytes, bytes]], body: bytes, stored: bool
) -> None:
    """A request-in-flight problem releases; other 409s store, with Retry-After or without."""
    outcome = outcome_to_store(_capture(409, headers, body), Settings())
    assert (outcome is not None) is stored


_IN_FLIGHT = {"type": "https://errors.example/idem#request-in-flight", "status": 409}


@pytest.mark.parametrize(
    ("answer", "committed"),
    [
        pytest.param(({"status": "waitlisted"}, 409, {"Retry-After": "30"}), True, id="app-409"),
        pytest.param(
            (_IN_FLIGHT, 409, {"Content-Type": "application/problem+json", "Retry-After": "1"}),
            False,
            id="request-in-flight",
        ),
    ],
)
def test_b18_transactional_409_commits_unless_another_layer_answered(
    answer: tuple[Any, int, dict[str, str]],
    committed: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transactional mode: an app's own 409 with Retry-After is its outcome, committed with its
    writes and replayed; a request-in-flight 409 (a layer behind answered: nothing ran there)
    rolls back and frees the key, so the retry runs the handler again."""
    monkeypatch.setenv("RETRYSAFE_SCOPE_SECRET", "layered-conflict-scope-secret")
    database = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(database)) as setup, setup:
        setup.execute("CREATE TABLE holds (note TEXT)")
    app = flask.Flask("layered")
    install(app, connect=lambda: sqlite3.connect(database, timeout=10))
    runs: list[int] = []

    @app.post("/seats")
    @transactional(required=True)
    def hold(tx: Any) -> Any:
        runs.append(1)
        tx.connection.execute("INSERT INTO holds VALUES ('waitlisted')")
        return answer

    client = app.test_client()
    headers = {**_HEADERS, "Idempotency-Key": "seat-1"}
    first, again = (client.post("/seats", json={}, headers=headers) for _ in range(2))
    assert (first.status_code, again.status_code) == (409, 409)
    assert again.get_json() == first.get_json()
    with contextlib.closing(sqlite3.connect(database)) as check, check:
        rows = check.execute("SELECT count(*) FROM holds").fetchone()[0]
    if committed:
        assert (rows, len(runs), again.headers.get("Idempotent-Replayed")) == (1, 1, "true")
    else:
        assert (rows, len(runs), again.headers.get("Idempotent-Replayed")) == (0, 2, None)
