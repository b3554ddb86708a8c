"""Headers a replay needs beyond the allow-list (B11): `Content-Disposition` says how the body is
taken (inline, or an attachment and its file name), so it is stored with it, as the encoding
is; and a status that RFC 9110 requires a header with (405 `Allow`, 401 `WWW-Authenticate`)
is stored with it. Served by uvicorn, on the memory store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore
from tests.servers import AsgiServer

ANSWERS: dict[str, tuple[int, list[tuple[bytes, bytes]]]] = {
    "/exports": (201, [(b"content-disposition", b"attachment; filename=report-2026.csv")]),
    "/login": (401, [(b"www-authenticate", b'Bearer realm="api"')]),
    "/only-get": (405, [(b"allow", b"GET, HEAD")]),
}


async def app(scope: Any, receive: Any, send: Any) -> None:
    """Answers each path with its status and header, and a counted body."""
    if scope["type"] != "http":
        return
    await receive()
    app.runs += 1  # type: ignore[attr-defined]
    status, headers = ANSWERS[scope["path"]]
    headers = [(b"content-type", b"text/csv"), (b"x-request-id", b"r-1"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"a,b\n1,2\n"})


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The app behind the middleware, its outcomes all stored, on uvicorn."""
    app.runs = 0  # type: ignore[attr-defined]
    middleware = IdempotencyMiddleware(
        app, store=AsyncMemoryStore(), scope_secret="s" * 32, outcomes="all"
    )
    server = AsgiServer(middleware)
    try:
        with httpx.Client(
            base_url=server.url, timeout=15, headers={"Authorization": "Bearer alice"}
        ) as http:
            yield http
    finally:
        server.stop()


@pytest.mark.parametrize("path", sorted(ANSWERS))
def test_b11_a_replay_keeps_the_headers_its_body_and_status_need(
    client: httpx.Client, path: str
) -> None:
    """The replay has the first answer's `Content-Disposition`, `WWW-Authenticate` or
    `Allow`; headers off the allow-list (`X-Request-Id`) are still dropped."""
    first = client.post(path, headers={"Idempotency-Key": "k-1"}, content=b"{}")
    again = client.post(path, headers={"Idempotency-Key": "k-1"}, content=b"{}")
    assert again.headers["idempotent-replayed"] == "true"
    assert app.runs == 1  # type: ignore[attr-defined]
    (name, value) = ANSWERS[path][1][0]
    assert again.headers[name.decode()] == first.headers[name.decode()] == value.decode()
    assert "x-request-id" not in again.headers
