"""A client that leaves while its response is being made (its timeout, a retrying client):
the effect has happened, so the retry gets the one outcome, never a second run (B18, B22).

Starlette's `StreamingResponse` stops its stream when it hears `http.disconnect` (uvicorn
speaks ASGI 2.3 here), so before this was fixed a client that left mid-stream freed the key.
Real uvicorn, raw client sockets; the handler counts its runs itself.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

import retrysafe
from retrysafe.asgi import IdempotencyMiddleware
from tests.http.conftest import CALLER, is_problem, make_client, wait_until
from tests.servers import AsgiServer

LIMIT = 1024  # max_response_size: a first chunk of 4096 bytes streams at once
WAIT = 10.0


@dataclass
class Streams:
    """The app's handler: its runs, and a gate its stream waits at after the first chunk."""

    runs: list[str] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)

    async def stream(self, request: Request) -> StreamingResponse:
        self.runs.append(request.query_params["n"])  # the effect
        first, fail = int(request.query_params["first"]), "fail" in request.query_params

        async def body() -> AsyncIterator[bytes]:
            yield b"a" * first
            # A wait that a cancellation ends at once, as a stream's wait for I/O would.
            await anyio.to_thread.run_sync(self.gate.wait, abandon_on_cancel=True)
            if fail:
                raise RuntimeError("the stream broke")
            yield b"b" * 100

        return StreamingResponse(body(), status_code=201, media_type="text/plain")


@pytest.fixture
def served() -> Iterator[tuple[AsgiServer, Streams]]:
    streams = Streams()
    app = Starlette(routes=[Route("/stream", streams.stream, methods=["POST"])])
    store = retrysafe.open_async_store("memory://")
    server = AsgiServer(IdempotencyMiddleware(app, store=store, max_response_size=LIMIT))
    yield server, streams
    streams.gate.set()
    server.stop()


def leave(server: AsgiServer, key: str, query: str, *, after: bytes) -> None:
    """Send the keyed POST on a raw socket, read until `after` arrives (nothing: until the
    handler ran), close the socket, and wait until uvicorn has seen it close."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(
            f"POST /stream?{query} HTTP/1.1\r\nHost: x\r\nAuthorization: {CALLER}\r\n"
            f'Idempotency-Key: "{key}"\r\nContent-Length: 0\r\n\r\n'.encode()
        )
        received = b""
        while after not in received:
            chunk = sock.recv(65536)
            assert chunk, "the server closed first"
            received += chunk
    wait_until(lambda: server.open_connections() == 0, WAIT)


def test_b18_a_client_that_leaves_mid_stream_gets_the_whole_outcome_on_its_retry(
    served: tuple[AsgiServer, Streams],
) -> None:
    """The app does not hear that its client left before its (storable) response is complete:
    the stream runs to its end, its outcome is stored, and the retry replays it."""
    server, streams = served
    key = str(uuid.uuid4())
    leave(server, key, "n=1&first=10", after=b"")  # the request sent; the stream waits
    wait_until(lambda: streams.runs == ["1"], WAIT)
    streams.gate.set()  # only now may the stream end: the client is long gone
    with make_client(server.url) as client:
        again = client.post("/stream?n=1&first=10", headers={"Idempotency-Key": f'"{key}"'})
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == b"a" * 10 + b"b" * 100
    assert streams.runs == ["1"]


def test_b22_a_client_that_leaves_a_streaming_large_response_gets_410_on_its_retry(
    served: tuple[AsgiServer, Streams],
) -> None:
    """Past the storable size the response streams to the client, which reads the status and
    leaves: the app hears it and stops, and the "response not stored" outcome is stored, as
    for a finished large response, so the retry does not run the handler again."""
    server, streams = served
    key = str(uuid.uuid4())
    leave(server, key, "n=1&first=4096", after=b"201 Created")
    streams.gate.set()
    with make_client(server.url) as client:
        again = client.post("/stream?n=1&first=4096", headers={"Idempotency-Key": f'"{key}"'})
    assert is_problem(again, 410, "response-not-stored")
    assert again.headers["idempotent-replayed"] == "true"
    assert streams.runs == ["1"]


def test_b22_an_app_that_raises_while_streaming_a_large_response_stores_410(
    served: tuple[AsgiServer, Streams], caplog: pytest.LogCaptureFixture
) -> None:
    """The 201 went out before the app raised: the effect happened, so the error is logged
    and the retry gets `response-not-stored`, not a second run."""
    server, streams = served
    streams.gate.set()
    key = str(uuid.uuid4())
    with make_client(server.url) as client:
        with pytest.raises(Exception):  # noqa: B017, PT011 - the body is cut, however httpx says it
            client.post("/stream?n=1&first=4096&fail", headers={"Idempotency-Key": f'"{key}"'})
        again = client.post("/stream?n=1&first=4096&fail", headers={"Idempotency-Key": f'"{key}"'})
    assert is_problem(again, 410, "response-not-stored")
    assert streams.runs == ["1"]
    assert "the outcome stands" in caplog.text


def test_b18_a_response_the_app_leaves_unfinished_reaches_the_client_unfinished() -> None:
    """An app that returns after its response start and part of its body is not answered for:
    its claim is released (nothing stored), and its client gets what the app sent, unfinished,
    as without the middleware; it was sent as a complete 201, which a retry then ran again."""
    runs: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})

    store = retrysafe.open_async_store("memory://")
    server = AsgiServer(IdempotencyMiddleware(app, store=store))
    try:
        with make_client(server.url) as client:
            for _ in range(2):
                with pytest.raises(httpx.RemoteProtocolError):
                    client.post("/pay", headers={"Idempotency-Key": '"unfinished"'})
    finally:
        server.stop()
    assert runs == [1, 1]  # released: the retry ran, and was not told "done" either
