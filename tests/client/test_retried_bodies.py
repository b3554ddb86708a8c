"""The body of a retried answer is read only up to a cap (SPEC B33, B36: resource limits).

A 409, 429 or 5xx that is retried has its body read within the attempt, so that its connection
can carry the retry. A body past `READ_WITHIN_MAX` (of no declared length: one that may never
end) is not read on: its connection is closed instead of reused and the retry goes on; if it is
the last answer, it reaches the caller whole, as any body does. A raw socket server in threads
sends the answers and tells how much of each body it could send.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from retrysafe.client import RetryPolicy
from retrysafe.client._bodies import READ_WITHIN_MAX
from tests.client.conftest import Sleeps
from tests.client.faces import FACES, Face
from tests.client.raw_server import ScriptedServer, read_request, started

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * (CHUNK // 256)
ENDLESS = 64 * 1024 * 1024
"""A body the client must not read to its end: 64 MiB, more than every socket buffer holds."""
FAST = RetryPolicy(attempts=5, timeout=30.0, wait_initial=0.01, wait_max=0.05)


def body_of(size: int) -> bytes:
    """The body of `size` bytes the server sends."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


@dataclass(frozen=True)
class Answer:
    """A response: `status` with a chunked body of `size` bytes."""

    status: int
    size: int


@dataclass
class Sent:
    """One answer as the server sent it."""

    key: str | None
    connection: int
    size: int
    sent: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def whole(self) -> bool:
        """Whether the whole body went out."""
        return self.sent == self.size


@dataclass
class ChunkedServer(ScriptedServer):
    """Answers the n-th request with the n-th answer (the last repeats), chunked, on a
    connection it keeps open; records each answer and how much of its body went out."""

    answers: list[Answer] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    connections: int = 0

    def serve(self, conn: socket.socket) -> None:
        """Answer each request on `conn` in turn."""
        with self.lock:
            self.connections += 1
            number = self.connections
        with conn:
            conn.settimeout(0.1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
            buffer = b""
            while not self.stopping.is_set():
                try:
                    request, buffer = read_request(conn, buffer, self.stopping)
                except OSError:
                    return
                with self.lock:
                    answer = self.answers[min(len(self.sent) + 1, len(self.answers)) - 1]
                    record = Sent(request.headers.get("idempotency-key"), number, answer.size)
                    self.sent.append(record)
                try:
                    self._send(conn, answer, record)
                except OSError:
                    return
                finally:
                    record.ended.set()

    def _send(self, conn: socket.socket, answer: Answer, record: Sent) -> None:
        conn.settimeout(10)
        conn.sendall(b"HTTP/1.1 %d Whatever\r\nTransfer-Encoding: chunked\r\n\r\n" % answer.status)
        body = body_of(answer.size)
        for start in range(0, answer.size, CHUNK):
            chunk = body[start : start + CHUNK]
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            record.sent += len(chunk)
        conn.sendall(b"0\r\n\r\n")
        conn.settimeout(0.1)


@pytest.fixture
def serve() -> Iterator[Callable[..., ChunkedServer]]:
    """Start a chunked server with the given answers; stop every one at the end."""
    yield from started(ChunkedServer)


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest, sleeps: Sleeps) -> Face:
    """Each client face, with an injected sleep that never waits."""
    return Face(request.param, FAST, sleeps)


@pytest.mark.parametrize("stream", [False, True], ids=["read", "stream"])
def test_b33_a_retried_answer_is_read_up_to_a_cap_then_its_connection_is_closed(
    face: Face, serve: Callable[..., ChunkedServer], stream: bool
) -> None:
    """A 503 whose body does not end within `READ_WITHIN_MAX` is not read to its end (nor
    held in memory): its connection is closed, not reused, and the retry, with the same key on
    a new connection, gets the answer."""
    server = serve(Answer(503, ENDLESS), Answer(201, 10))
    outcome = face.request("POST", f"{server.url}/payments", content=b"{}", stream=stream)
    assert (outcome.status, outcome.body) == (201, body_of(10))
    unavailable, created = server.sent
    assert unavailable.ended.wait(10)
    assert READ_WITHIN_MAX <= unavailable.sent < ENDLESS
    assert created.connection != unavailable.connection
    assert unavailable.key is not None
    assert created.key == unavailable.key


@pytest.mark.parametrize("stream", [False, True], ids=["read", "stream"])
def test_b33_a_retried_answer_past_the_cap_that_is_the_last_reaches_the_caller_whole(
    face: Face, serve: Callable[..., ChunkedServer], stream: bool
) -> None:
    """When retries are over, the last 503 is returned with its whole body, the part read
    within the attempt and the rest, as without retries."""
    face.policy = RetryPolicy(attempts=2, timeout=30.0, wait_initial=0.01)
    size = 3 * READ_WITHIN_MAX + 7
    server = serve(Answer(503, size))
    outcome = face.request("POST", f"{server.url}/payments", content=b"{}", stream=stream)
    assert outcome.status == 503
    assert hashlib.sha256(outcome.body).digest() == hashlib.sha256(body_of(size)).digest()
    assert len(server.sent) == 2
    assert server.sent[0].key == server.sent[1].key


@pytest.mark.parametrize("stream", [False, True], ids=["read", "stream"])
def test_b33_a_small_retried_answer_is_drained_and_its_connection_reused(
    face: Face, serve: Callable[..., ChunkedServer], stream: bool
) -> None:
    """A 503 of no declared length that ends within the cap is read, and its connection
    carries the retry."""
    server = serve(Answer(503, READ_WITHIN_MAX), Answer(201, 10))
    outcome = face.request("POST", f"{server.url}/payments", content=b"{}", stream=stream)
    assert (outcome.status, outcome.body) == (201, body_of(10))
    unavailable, created = server.sent
    assert unavailable.whole
    assert created.connection == unavailable.connection
