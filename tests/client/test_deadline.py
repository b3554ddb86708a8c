"""The total-time bound (SPEC B33) holds against a server that trickles its answer.

A socket timeout bounds each read, not the attempt: a server that sends a byte every few
hundredths of a second keeps every read within it. These tests serve such answers from a raw
socket server in a thread and check that each client face ends the logical request at
`RetryPolicy.timeout` with its timeout error, and sends nothing after it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import requests

from retrysafe.client import RetryPolicy
from tests.client.conftest import Sleeps
from tests.client.faces import FACES, Face
from tests.client.raw_server import ScriptedServer, read_request

BOUND = 1.0
"""The policy's total-time bound in these tests, in seconds."""
GAP = 0.05
"""The seconds between two trickled bytes; 400 of them take 20 s, twenty times the bound."""
PAD = b"a" * 400
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
TRICKLED_HEAD = b"HTTP/1.1 201 Created\r\nX-Pad: " + PAD + b"\r\nContent-Length: 2\r\n\r\nok"
BODY_HEAD = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(PAD)


@dataclass(frozen=True)
class Answer:
    """What the server sends for one request: `now` at once, then `trickled` byte by byte."""

    now: bytes = b""
    trickled: bytes = b""


HEAD = Answer(trickled=TRICKLED_HEAD)
BODY = Answer(now=BODY_HEAD, trickled=PAD)
UNAVAILABLE_NOW = Answer(now=UNAVAILABLE)


@dataclass
class TrickleServer(ScriptedServer):
    """A raw HTTP/1.1 server on a loopback port: the n-th request gets the n-th answer (the
    last repeats), and each request's Idempotency-Key is recorded."""

    answers: list[Answer] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)

    def serve(self, conn: socket.socket) -> None:
        """Answer each request on `conn` in turn, trickling what the answer trickles."""
        with conn:
            conn.settimeout(0.1)
            buffer = b""
            while not self.stopping.is_set():
                try:
                    request, buffer = read_request(conn, buffer, self.stopping)
                except OSError:
                    return
                with self.lock:
                    self.keys.append(request.headers.get("idempotency-key"))
                    answer = self.answers[min(len(self.keys), len(self.answers)) - 1]
                if not self._send(conn, answer):
                    return

    def _send(self, conn: socket.socket, answer: Answer) -> bool:
        """Send `answer`; False once the client hung up or the server stops."""
        try:
            conn.sendall(answer.now)
            for byte in answer.trickled:
                if self.stopping.wait(GAP):
                    return False
                conn.sendall(bytes([byte]))
        except OSError:
            return False
        return True


@pytest.fixture
def serve() -> Iterator[list[TrickleServer]]:
    """Start trickle servers on demand (append to the list); stop them all at the end."""
    servers: list[TrickleServer] = []
    yield servers
    for server in servers:
        server.stop()


def _server(servers: list[TrickleServer], *answers: Answer) -> TrickleServer:
    server = TrickleServer(list(answers))
    server.start()
    servers.append(server)
    return server


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest) -> Face:
    """Each client face on the real clock, its bound `BOUND`, five attempts allowed."""
    return Face(request.param, RetryPolicy(attempts=5, timeout=BOUND, wait_initial=0.01), None)


def _times_out(face: Face, url: str) -> float:
    """POST to `url`; assert it raised the face's timeout error for the bound; return seconds."""
    started = time.monotonic()
    with pytest.raises((httpx.ReadTimeout, requests.exceptions.ReadTimeout)) as caught:
        face.request("POST", url, content=b'{"amount": 5}', timeout=60.0)
    elapsed = time.monotonic() - started
    assert "RetryPolicy.timeout" in str(caught.value)
    return elapsed


def test_b33_a_trickling_head_ends_the_request_at_the_bound(
    face: Face, serve: list[TrickleServer]
) -> None:
    """A response head trickled a byte at a time (each read in time) is cut at the total-time
    bound with the face's ReadTimeout, and the attempt whose outcome is unknown is not retried."""
    server = _server(serve, HEAD)
    elapsed = _times_out(face, f"{server.url}/payments")
    assert elapsed < 3 * BOUND  # a liveness bound: the whole trickle takes 20 s
    assert len(server.keys) == 1


def test_b33_a_trickling_body_ends_the_request_at_the_bound(
    face: Face, serve: list[TrickleServer]
) -> None:
    """A body that the client reads for the caller, trickled after a prompt head, is cut at the
    total-time bound too, with the face's ReadTimeout."""
    server = _server(serve, BODY)
    elapsed = _times_out(face, f"{server.url}/payments")
    assert elapsed < 3 * BOUND
    assert len(server.keys) == 1


def test_b33_an_attempt_cut_at_the_bound_is_the_last_whatever_the_clock_says(
    face: Face, serve: list[TrickleServer], sleeps: Sleeps
) -> None:
    """After a 503 and a retry with the same key that trickles, the cut retry ends the request:
    no third attempt, even on a manual clock that the trickle did not move."""
    face.sleeps = sleeps
    server = _server(serve, UNAVAILABLE_NOW, HEAD)
    elapsed = _times_out(face, f"{server.url}/payments")
    assert elapsed < 3 * BOUND
    assert len(sleeps.delays) == 1  # the wait after the 503, none after the cut attempt
    assert len(server.keys) == 2
    assert server.keys[0] is not None
    assert server.keys[0] == server.keys[1]
