"""SPEC B36 (resource limits hold under attack) for the console: a connection that sends no
request head, or half of one, is closed within the head timeout; a POST body over the cap is
refused (413) before more of it is read; a record's long exception arguments and headers are
cut in the API; and the overview's store scans are shared for a few seconds."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from retrysafe import Identity, ManualClock, Store, idempotent
from retrysafe._http.outcome import encode_outcome
from retrysafe._http.settings import Settings
from retrysafe.cli.console import console_config
from retrysafe.console import create_app
from retrysafe.console._data import PREVIEW_CHARS
from retrysafe.console._limits import MAX_BODY, SUMMARY_SECONDS
from tests.console.conftest import TOKEN
from tests.servers import AsgiServer

HEAD_TIMEOUT = 0.5
WAIT = 10.0
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def console(store: Store) -> Iterator[int]:
    """The console served as `retrysafe console` serves it (its uvicorn config), with a short
    head timeout; yield its port."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(console_config(create_app(store, TOKEN), head_timeout=HEAD_TIMEOUT))
    thread = threading.Thread(target=asyncio.run, args=(server.serve(sockets=[sock]),), daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert time.monotonic() < deadline, "the console did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(WAIT)
        sock.close()


def _closed_within(conn: socket.socket, seconds: float) -> float:
    """Wait (at most `seconds`) for the server to close `conn`; return how long it took."""
    started = time.monotonic()
    conn.settimeout(seconds)
    while conn.recv(4096):  # a 400 or other answer first is fine; then the close
        pass
    return time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"GET /api/summary HTTP/1.1\r\nHost: x\r\n"])
def test_b36_a_connection_without_a_whole_request_head_is_closed(console: int, sent: bytes) -> None:
    """A connection that sends nothing, or half a head, is closed within the head timeout;
    the console still answers the operator."""
    with socket.create_connection(("127.0.0.1", console), timeout=WAIT) as conn:
        conn.sendall(sent)
        assert _closed_within(conn, WAIT) < HEAD_TIMEOUT + 3
    answer = httpx.get(f"http://127.0.0.1:{console}/api/summary", headers=BEARER, timeout=WAIT)
    assert answer.status_code == 200


def _answer_to(port: int, head: bytes, body: bytes) -> bytes:
    """Send a head and part of a body, never the rest; return the answer's head."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as conn:
        conn.sendall(head + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


def _head(path: str, content_type: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {content_type}\r\n{framing}\r\n\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/purge", "application/json"), ("/purge", "application/x-www-form-urlencoded")],
)
def test_b36_a_post_body_over_the_cap_is_413_before_the_rest_is_read(
    console: int, path: str, content_type: str
) -> None:
    """A declared Content-Length over the cap is refused at once, and a chunked body is
    refused once the cap is passed: the console never waits for the rest (300 MB here)."""
    declared = _answer_to(console, _head(path, content_type, "Content-Length: 300000000"), b"{")
    assert declared.startswith(b"HTTP/1.1 413 "), declared
    chunk = b"%x\r\n%s\r\n" % (MAX_BODY, b" " * MAX_BODY)
    chunked = _answer_to(
        console, _head(path, content_type, "Transfer-Encoding: chunked"), chunk * 2
    )
    assert chunked.startswith(b"HTTP/1.1 413 "), chunked
    if path.startswith("/api/"):
        assert b"application/problem+json" in chunked


def test_b36_a_records_long_exception_arguments_and_headers_are_cut(store: Store) -> None:
    """An exception's arguments and a response's headers over the preview are cut, and named
    in `truncated`: the answer stays small whatever was stored."""

    @idempotent(store, key="order_id", namespace="big", final_exceptions=(ValueError,))
    def charge(order_id: str) -> str:
        raise ValueError("short message", "A" * 300_000)

    with contextlib.suppress(ValueError):
        charge("o-1")
    http = Identity("web", "tenant", "o-2")
    claim = store.claim(http, "fp", lease=30, retention=3600)
    headers = [(b"content-type", b"text/plain; x=" + b"a" * 200_000)]
    headers += [(b"location", b"/" + b"b" * 200_000)] * 3
    store.complete(
        http, claim.token, encode_outcome(201, headers, b"ok", Settings()), retention=3600
    )

    server = AsgiServer(create_app(store, TOKEN))
    try:
        with httpx.Client(base_url=server.url, headers=BEARER, timeout=WAIT) as client:
            ref = client.get("/api/records", params={"namespace": "big"}).json()["records"][0]
            raised = client.get("/api/record", params={"ref": ref["ref"]})
            page = client.get("/record", params={"ref": ref["ref"]})
            named = {"namespace": "web", "scope": "tenant", "key": "o-2"}
            stored = client.get("/api/record", params=named)
    finally:
        server.stop()
    assert len(raised.content) < 4 * PREVIEW_CHARS
    assert "args" in raised.json()["outcome"]["truncated"]
    assert raised.json()["outcome"]["args"][0] == "short message"
    assert page.status_code == 200
    assert len(stored.content) < 4 * PREVIEW_CHARS
    outcome = stored.json()["outcome"]
    assert "headers" in outcome["truncated"]
    assert outcome["headers"][0][0] == "content-type"
    assert all(len(pair) == 2 for pair in outcome["headers"])


def test_b36_the_overview_is_computed_once_for_a_few_seconds(
    store: Store, clock: ManualClock
) -> None:
    """The overview (several scans of the store) is kept for SUMMARY_SECONDS: a record added
    meanwhile shows once they pass, or at once after a delete or purge made here."""
    server = AsgiServer(create_app(store, TOKEN))
    try:
        with httpx.Client(base_url=server.url, headers=BEARER, timeout=WAIT) as client:
            first = client.get("/api/summary").json()
            store.claim(Identity("jobs", "w", "k1"), "fp", lease=30, retention=3600)
            assert client.get("/api/summary").json() == first
            clock.advance(SUMMARY_SECONDS)
            second = client.get("/api/summary").json()
            assert second["totals"]["in_flight"] == 1
            store.claim(Identity("jobs", "w", "k2"), "fp", lease=30, retention=3600)
            assert client.post("/api/purge", json={"confirm": True}).status_code == 200
            assert client.get("/api/summary").json()["totals"]["in_flight"] == 2
    finally:
        server.stop()
