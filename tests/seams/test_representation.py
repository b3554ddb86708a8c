"""Compressed and otherwise encoded responses replay as the same representation (B11)."""

from __future__ import annotations

import gzip
import itertools
import uuid
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import retrysafe
from retrysafe.asgi import IdempotencyMiddleware
from tests.http.conftest import make_client
from tests.servers import AsgiServer

BODY = b'{"payment": "' + b"x" * 4000 + b'"}'  # large enough for GZipMiddleware to compress
AUTH = {"Authorization": "Bearer ada"}


def compressing_app(runs: itertools.count[int]) -> Starlette:
    """A payments app with GZipMiddleware inside: it compresses for clients that accept gzip."""

    async def pay(request: Request) -> Response:
        next(runs)
        return Response(
            BODY,
            status_code=201,
            media_type="application/json",
            headers={"Content-Language": "en", "Vary": "Accept-Encoding"},
        )

    app = Starlette(routes=[Route("/pay", pay, methods=["POST"])])
    app.add_middleware(GZipMiddleware, minimum_size=500)
    return app


@pytest.fixture
def served() -> Iterator[tuple[str, itertools.count[int]]]:
    """The compressing app inside the idempotency middleware, on uvicorn."""
    runs = itertools.count()
    app = IdempotencyMiddleware(
        compressing_app(runs), store=retrysafe.open_async_store("memory://")
    )
    server = AsgiServer(app)
    yield server.url, runs
    server.stop()


def _raw(client: httpx.Client, key: str, encoding: str) -> tuple[httpx.Response, bytes]:
    """Send a keyed POST accepting `encoding`; return the response and its body as sent."""
    headers = {**AUTH, "Idempotency-Key": f'"{key}"', "Accept-Encoding": encoding}
    request = client.build_request("POST", "/pay", content=b"{}", headers=headers)
    response = client.send(request, stream=True)
    try:
        return response, b"".join(response.iter_raw())
    finally:
        response.close()


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_b11_a_compressed_response_replays_with_its_content_encoding(
    served: tuple[str, itertools.count[int]], encoding: str
) -> None:
    """The replay of a response compressed inside the middleware carries the same bytes and
    the same Content-Encoding, Content-Type, Content-Language and Vary, and decodes alike."""
    url, runs = served
    key = str(uuid.uuid4())
    with make_client(url) as client:
        first, first_body = _raw(client, key, encoding)
        again, again_body = _raw(client, key, encoding)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    for name in ("content-encoding", "content-type", "content-language", "vary"):
        assert again.headers.get(name) == first.headers.get(name), name
    assert again_body == first_body
    if encoding == "gzip":
        assert first.headers["content-encoding"] == "gzip"
        assert gzip.decompress(again_body) == BODY
    else:
        assert "content-encoding" not in again.headers
        assert again_body == BODY
    assert next(runs) == 1  # the handler ran once


def test_b11_a_retry_with_another_accept_encoding_gets_the_stored_representation(
    served: tuple[str, itertools.count[int]],
) -> None:
    """A retry that no longer accepts gzip gets the stored gzip representation, labelled as
    such, so a client can still decode it (the documented choice)."""
    url, runs = served
    key = str(uuid.uuid4())
    with make_client(url) as client:
        _, first_body = _raw(client, key, "gzip")
        again, again_body = _raw(client, key, "identity")
        decoded = client.post(
            "/pay", content=b"{}", headers={**AUTH, "Idempotency-Key": f'"{key}"'}
        )
    assert again.headers["content-encoding"] == "gzip"
    assert again_body == first_body
    assert decoded.content == BODY  # httpx decodes by Content-Encoding
    assert next(runs) == 1


@pytest.mark.parametrize("encoding", ["gzip", "identity"])
def test_b11_with_gzip_outside_the_middleware_every_replay_is_compressed_per_request(
    encoding: str,
) -> None:
    """GZipMiddleware outside the idempotency middleware (as docs/http.md suggests when clients
    change Accept-Encoding) compresses replays too: it edits the header list of the response
    it passes on, which a replay's used to refuse (a tuple: every replay was a 500)."""
    runs = itertools.count()
    inner = compressing_app(runs)
    inner.user_middleware.clear()  # the app uncompressed; the compression outside, below
    app = GZipMiddleware(
        IdempotencyMiddleware(inner, store=retrysafe.open_async_store("memory://")),
        minimum_size=500,
    )
    server = AsgiServer(app)
    try:
        key = str(uuid.uuid4())
        with make_client(server.url) as client:
            first, first_body = _raw(client, key, "gzip")
            again, again_body = _raw(client, key, encoding)
    finally:
        server.stop()
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert first.headers["content-encoding"] == "gzip"
    assert gzip.decompress(first_body) == BODY
    if encoding == "gzip":
        assert again.headers["content-encoding"] == "gzip"
        assert gzip.decompress(again_body) == BODY
    else:
        assert "content-encoding" not in again.headers
        assert again_body == BODY
    assert next(runs) == 1


def test_b11_behind_the_proxy_a_compressing_upstream_replays_decodably() -> None:
    """An upstream that compresses, behind `retrysafe proxy`: the replay keeps its
    Content-Encoding and decodes to the same body; the upstream ran once."""
    from retrysafe.proxy import build_proxy

    runs = itertools.count()
    upstream = AsgiServer(compressing_app(runs))
    proxy = AsgiServer(
        build_proxy(upstream.url, store=retrysafe.open_async_store("memory://")), lifespan="on"
    )
    key = str(uuid.uuid4())
    try:
        with make_client(proxy.url) as client:
            first, first_body = _raw(client, key, "gzip")
            again, again_body = _raw(client, key, "gzip")
            decoded = client.post(
                "/pay", content=b"{}", headers={**AUTH, "Idempotency-Key": f'"{key}"'}
            )
    finally:
        proxy.stop()
        upstream.stop()
    assert first.headers["content-encoding"] == again.headers["content-encoding"] == "gzip"
    assert again.headers["idempotent-replayed"] == "true"
    assert again_body == first_body
    assert gzip.decompress(again_body) == BODY
    assert decoded.content == BODY
    assert next(runs) == 1
