"""The fingerprint covers the request-target as received: encoded paths are other requests (B12)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import retrysafe
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.proxy import build_proxy
from tests.proxy.raw import exchange
from tests.servers import AsgiServer


def echo_app(runs: itertools.count[int]) -> Starlette:
    """Answers every POST with the raw path it received and a run number."""

    async def echo(request: Request) -> Response:
        return JSONResponse(
            {"n": next(runs), "raw": request.scope["raw_path"].decode("latin-1")}, 201
        )

    return Starlette(routes=[Route("/{rest:path}", echo, methods=["POST"])])


@pytest.fixture(params=["middleware", "proxy"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A loopback port serving the echo app behind the middleware, or behind the proxy."""
    servers = []
    if request.param == "middleware":
        app = IdempotencyMiddleware(
            echo_app(itertools.count(1)), store=retrysafe.open_async_store("memory://")
        )
        servers.append(AsgiServer(app))
    else:
        servers.append(AsgiServer(echo_app(itertools.count(1))))
        proxy = build_proxy(servers[0].url, store=retrysafe.open_async_store("memory://"))
        servers.append(AsgiServer(proxy, lifespan="on"))
    yield int(servers[-1].url.rsplit(":", 1)[1])
    for server in reversed(servers):
        server.stop()


def post(port: int, target: bytes, key: str) -> tuple[int, bytes]:
    """POST `target` over a raw socket with `key`; return the status and body."""
    raw = (
        b"POST " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"Authorization: Bearer ada\r\nContent-Length: 2\r\n"
        b'Idempotency-Key: "' + key.encode() + b'"\r\n\r\n{}'
    )
    response = exchange(port, raw)
    assert response is not None
    return response.status, response.body


@pytest.mark.parametrize(
    ("first", "second"),
    [(b"/pay/x", b"/pay%2Fx"), (b"/pay/%ff", b"/pay/%fe"), (b"/a%20b", b"/a%20b")],
    ids=["slash", "bytes", "same"],
)
def test_b12_encoded_targets_are_other_requests(port: int, first: bytes, second: bytes) -> None:
    """One key on `/pay/x` then `/pay%2Fx` (or `/pay/%ff` then `/pay/%fe`): the second is
    another request (422 key-mismatch), never the first's response; the same raw target
    replays."""
    key = str(uuid.uuid4())
    status, body = post(port, first, key)
    assert status == 201
    again_status, again_body = post(port, second, key)
    if first == second:
        assert (again_status, again_body) == (201, body)
    else:
        assert again_status == 422
        assert b"key-mismatch" in again_body
        assert again_body != body
