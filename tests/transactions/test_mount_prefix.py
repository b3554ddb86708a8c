"""B5, B6: transactional mode's route patterns name the path as the app routes it, without
the prefix the app is mounted under, as the HTTP middleware's do (tests/http/test_mount_prefix.py).
The middleware runs inside Starlette's `Mount("/api", ...)` on uvicorn, over SQLite."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from retrysafe.asgi import RouteSettings
from retrysafe.transactions.asgi import TransactionalMiddleware
from tests.http.conftest import is_problem, make_client
from tests.servers import AsgiServer

SECRET = b"a secret of at least 16 bytes"


class Counted:
    """An ASGI app that answers every POST 201 and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Counted, httpx.Client]]:
    """The app under transactional mode, mounted at `/api`, `/payments` requiring a key and
    every other path not covered."""
    app, path = Counted(), tmp_path / "app.db"
    middleware = TransactionalMiddleware(
        app,
        connect=lambda: sqlite3.connect(path, timeout=30, check_same_thread=False),
        routes={"/payments": RouteSettings(required=True), "**": None},
        scope_secret=SECRET,
    )
    server = AsgiServer(Starlette(routes=[Mount("/api", app=middleware)]))
    try:
        with make_client(server.url) as client:
            yield app, client
    finally:
        server.stop()


def test_b6_a_route_pattern_requires_its_key_under_a_mount_prefix(
    mounted: tuple[Counted, httpx.Client],
) -> None:
    """`/payments` requires a key at `/api/payments`: without one it is refused, and with one
    a retry is a replay; the handler ran once."""
    app, client = mounted
    assert is_problem(client.post("/api/payments"), 400, "key-required")
    keyed = {"Idempotency-Key": '"k-1"'}
    first = client.post("/api/payments", headers=keyed)
    retry = client.post("/api/payments", headers=keyed)
    assert (first.status_code, retry.status_code) == (201, 201)
    assert retry.headers["idempotent-replayed"] == "true"
    assert app.calls == 1
