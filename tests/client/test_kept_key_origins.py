"""B32: a key the client generated never leaves its origin, even on a request object the caller
sends again somewhere else, and it does not stay on the caller's own requests request once the
redirect that needed it went. Real HTTP servers (two origins: two ports)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest
import requests

from retrysafe.client import IdempotentAdapter, IdempotentTransport

KEY = "Idempotency-Key"
REDIRECTS = {"/a": "/b", "/hostless": "http:/b"}


class _Handler(http.server.BaseHTTPRequestHandler):
    """`POST /a` answers 307 to `/b`, `POST /hostless` a 307 to `http:/b` (no host); any other
    POST answers 200 with the key it carried."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path in REDIRECTS:
            self.send_response(307)
            self.send_header("Location", REDIRECTS[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = (self.headers.get(KEY) or "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origins() -> Iterator[tuple[str, str]]:
    """Two origins: one server on each of two ports."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield tuple(f"http://127.0.0.1:{s.server_port}" for s in servers)  # type: ignore[misc]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_b32_an_httpx_request_sent_again_to_another_origin_gets_a_new_key(
    origins: tuple[str, str],
) -> None:
    """Sent again to its origin, an httpx request keeps its key; re-targeted to another
    origin, it gets a new one."""
    first, other = origins
    with httpx.Client(transport=IdempotentTransport()) as client:
        request = client.build_request("POST", f"{first}/b", content=b"{}")
        key = client.send(request).text
        again = client.send(request).text
        request.url = httpx.URL(f"{other}/b")
        elsewhere = client.send(request).text
    assert key
    assert again == key
    assert elsewhere not in ("", key)


def test_b32_requests_takes_the_handed_on_key_off_the_callers_request(
    origins: tuple[str, str],
) -> None:
    """A same-origin 307 keeps the key for its redirect, and the caller's request carries no
    key once the redirect went; sent to another origin, it gets a new key."""
    first, other = origins
    with requests.Session() as session:
        session.mount("http://", IdempotentAdapter())
        prepared = session.prepare_request(requests.Request("POST", f"{first}/a", data=b"{}"))
        redirected = session.send(prepared)
        assert redirected.history[0].status_code == 307
        assert KEY not in prepared.headers
        key = redirected.text
        prepared.prepare_url(f"{other}/b", None)
        elsewhere = session.send(prepared).text
    assert key
    assert elsewhere not in ("", key)


def test_b32_a_requests_request_answered_307_unfollowed_takes_its_key_to_its_origin_only(
    origins: tuple[str, str],
) -> None:
    """Not followed (`allow_redirects=False`), the 307 leaves the key on the caller's request
    for its redirect; the caller's request re-targeted to another origin gets a new key."""
    first, other = origins
    with requests.Session() as session:
        session.mount("http://", IdempotentAdapter())
        prepared = session.prepare_request(requests.Request("POST", f"{first}/a", data=b"{}"))
        answered = session.send(prepared, allow_redirects=False)
        assert answered.status_code == 307
        prepared.prepare_url(f"{other}/b", None)
        elsewhere = session.send(prepared).text
    assert elsewhere
    assert elsewhere != answered.request.headers[KEY]
    assert KEY not in prepared.headers


def test_b32_an_httpx_request_answered_307_unfollowed_takes_its_key_to_its_origin_only(
    origins: tuple[str, str],
) -> None:
    """The key a same-origin 307 hands on is for a request to that origin: the caller's
    request, answered with it and then re-targeted to another origin, gets a new key."""
    first, other = origins
    with httpx.Client(transport=IdempotentTransport()) as client:
        request = client.build_request("POST", f"{first}/a", content=b"{}")
        answered = client.send(request)
        assert answered.status_code == 307
        request.url = httpx.URL(f"{other}/b")
        elsewhere = client.send(request).text
    assert elsewhere
    assert elsewhere != f'"{answered.extensions["idempotency_key"]}"'


class _PortEighty(httpx.HTTPTransport):
    """Sends what goes to port 80 of 127.0.0.1 to `port` instead, as if that server listened
    there (a test cannot count on binding port 80), and records each URL asked for."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port
        self.asked: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(str(request.url))
        if request.url.port is None:
            request.url = request.url.copy_with(port=self.port)
        return super().handle_request(request)


def test_b32_a_hostless_location_followed_to_another_port_gets_a_new_key(
    origins: tuple[str, str],
) -> None:
    """`Location: http:/b` has no host: httpx sends the redirect to the request's host on
    the scheme's default port, another origin than the request's, so it gets a new key."""
    first, other = origins
    port = httpx.URL(other).port
    assert port is not None
    inner = _PortEighty(port)
    with httpx.Client(transport=IdempotentTransport(inner), follow_redirects=True) as client:
        response = client.post(f"{first}/hostless", content=b"{}")
    assert inner.asked[1] == "http://127.0.0.1/b"
    assert response.status_code == 200
    assert response.history[0].status_code == 307
    assert response.text
    assert response.text != f'"{response.history[0].extensions["idempotency_key"]}"'
