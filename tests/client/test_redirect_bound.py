"""The total-time bound (SPEC B33) covers the redirects that keep the key: one deadline.

A 307 or 308 to the same origin is the same operation, sent with the same key; it is also
sent within the same `RetryPolicy.timeout`, measured from when the first request was handed
to the client. A real HTTP server answers every POST with a 307 to itself and moves the
clients' injected clock on by `STEP` seconds, as if each answer took that long.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import anyio
import httpx
import pytest
import requests

from retrysafe import ManualClock
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentAdapter,
    IdempotentTransport,
    RetryPolicy,
)
from tests.client.conftest import Sleeps
from tests.client.faces import FACES, Face

BOUND = 3.0
STEP = 2.5
"""Seconds each answer takes on the injected clock: the second redirect begins past `BOUND`."""


class _Server(http.server.ThreadingHTTPServer):
    clock: ManualClock
    keys: list[str | None]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Every POST: the clock moves on by `STEP`, and the answer is a 307 to the same path."""

    server: _Server

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.keys.append(self.headers.get("Idempotency-Key"))
        self.server.clock.advance(STEP)
        self.send_response(307)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(sleeps: Sleeps) -> Iterator[_Server]:
    """The redirecting server, moving `sleeps.clock`."""
    served = _Server(("127.0.0.1", 0), _Handler)
    served.clock, served.keys = sleeps.clock, []
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        yield served
    finally:
        served.shutdown()
        served.server_close()


def _url(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_port}/payments"


@pytest.mark.parametrize("name", FACES)
def test_b33_same_origin_redirects_share_the_deadline_of_the_first_request(
    name: str, server: _Server, sleeps: Sleeps
) -> None:
    """Followed 307s to the same origin end at the bound of the first request: the redirect
    that would begin past it is not sent, and the call ends with the face's ReadTimeout."""
    face = Face(name, RetryPolicy(timeout=BOUND), sleeps)
    with pytest.raises((httpx.ReadTimeout, requests.exceptions.ReadTimeout)) as caught:
        face.request("POST", _url(server), content=b"{}", follow_redirects=True)
    assert "RetryPolicy.timeout" in str(caught.value)
    assert len(server.keys) == 2  # at 0 s and at 2.5 s; the third would begin at 5 s
    assert server.keys[0] is not None
    assert server.keys[0] == server.keys[1]


def test_b33_an_httpx_request_sent_again_gets_a_new_deadline(
    server: _Server, sleeps: Sleeps
) -> None:
    """The request answered with the 307 (not followed), sent again after the bound, is a new
    call: it is sent, with its key, within a bound of its own."""
    transport = IdempotentTransport(policy=RetryPolicy(timeout=BOUND), clock=sleeps.clock)
    with httpx.Client(transport=transport) as client:
        request = client.build_request("POST", _url(server), content=b"{}")
        assert client.send(request).status_code == 307
        sleeps.clock.advance(10 * BOUND)
        assert client.send(request).status_code == 307
    assert len(server.keys) == 2
    assert server.keys[0] == server.keys[1]


def test_b33_an_async_redirect_sent_by_hand_at_once_keeps_the_deadline(
    server: _Server, sleeps: Sleeps
) -> None:
    """`response.next_request` is the redirect: sent by hand it keeps the key and the deadline
    of the request it redirects."""

    async def send() -> None:
        transport = AsyncIdempotentTransport(policy=RetryPolicy(timeout=BOUND), clock=sleeps.clock)
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(_url(server), content=b"{}")
            assert response.next_request is not None
            response = await client.send(response.next_request)
            assert response.next_request is not None
            with pytest.raises(httpx.ReadTimeout):
                await client.send(response.next_request)

    anyio.run(send)
    assert len(server.keys) == 2
    assert server.keys[0] == server.keys[1]


def test_b33_a_requests_request_sent_again_gets_a_new_deadline(
    server: _Server, sleeps: Sleeps
) -> None:
    """The requests face: the caller's request answered with the 307 (not followed), sent
    again after the bound, is sent with its key within a bound of its own."""
    with requests.Session() as session:
        adapter = IdempotentAdapter(policy=RetryPolicy(timeout=BOUND), clock=sleeps.clock)
        session.mount("http://", adapter)
        prepared = session.prepare_request(requests.Request("POST", _url(server), data=b"{}"))
        assert session.send(prepared, allow_redirects=False).status_code == 307
        sleeps.clock.advance(10 * BOUND)
        assert session.send(prepared, allow_redirects=False).status_code == 307
    assert len(server.keys) == 2
    assert server.keys[0] == server.keys[1]
