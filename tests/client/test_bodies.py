"""A response body cut off (SPEC B33), and proxies (B32), on the httpx transports.

A raw socket server in a thread applies each request, then answers it with the bytes the test
scripted and closes the connection: so it can send a whole head and part of a body, as a
server, proxy or network that fails at the wrong moment does.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from retrysafe.client import AsyncIdempotentTransport, IdempotentTransport, RetryEvent, RetryPolicy
from retrysafe.client._bodies import READ_WITHIN_MAX
from retrysafe.observe import Attempt, Observer
from tests.client.conftest import Sleeps
from tests.client.faces import Face
from tests.client.raw_server import ScriptedServer, read_request, started

FAST = RetryPolicy(attempts=5, timeout=30.0, wait_initial=0.01, wait_max=0.05)
HTTPX_FACES = ("sync", "async")
RECEIPT = b'{"charge": "ch_1", "amount": 500}'
CUT = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(RECEIPT) + RECEIPT[:5]
)
"""A 201 whose body is cut after 5 of its bytes."""
REPLAY = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nIdempotent-Replayed: true\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(RECEIPT) + RECEIPT
)
LARGE_CUT = b'HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n{"cha' % (READ_WITHIN_MAX + 1)
"""A 201 that declares a byte more than is read within the attempt, cut after 5 bytes."""
CHUNKED_CUT = b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"cha\r\n'
"""A 201 of no declared length, cut after its first chunk."""
UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class Received:
    """One request as the server read it."""

    target: str
    key: str | None


@dataclass
class CuttingServer(ScriptedServer):
    """Answers the n-th request with the n-th answer (the last repeats), then closes."""

    answers: list[bytes] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def serve(self, conn: socket.socket) -> None:
        """Read one request, send its answer, and close the connection."""
        with conn:
            conn.settimeout(0.1)
            try:
                request, _ = read_request(conn, b"", self.stopping)
            except OSError:
                return
            with self.lock:
                key = request.headers.get("idempotency-key")
                self.received.append(Received(request.target, key))
                answer = self.answers[min(len(self.received), len(self.answers)) - 1]
            try:
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                return


@pytest.fixture
def serve() -> Iterator[Callable[..., CuttingServer]]:
    """Start a cutting server with the given answers; stop every one at the end."""
    yield from started(CuttingServer)


class Recorder(Observer):
    """Keeps every attempt it is told about."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def attempted(self, attempt: Attempt) -> None:
        """Record `attempt`."""
        self.attempts.append(attempt)


@pytest.fixture(params=HTTPX_FACES)
def face(request: pytest.FixtureRequest, sleeps: Sleeps) -> Face:
    """Each httpx face, with an injected sleep that never waits."""
    return Face(request.param, FAST, sleeps)


def _key_of(error: httpx.HTTPError) -> str:
    key = error.request.extensions["idempotency_key"]
    assert isinstance(key, str)
    return key


def test_b33_a_body_cut_off_is_retried_with_the_same_key(
    face: Face, serve: Callable[..., CuttingServer]
) -> None:
    """A keyed POST whose small body is cut off after the server applied it is retried with
    the same key within the call, and the caller gets the replay; hooks and observers see the
    cut attempt as an error."""
    events: list[RetryEvent] = []
    recorder = Recorder()
    face.hooks, face.observers = [events.append], [recorder]
    server = serve(CUT, REPLAY)
    outcome = face.request("POST", f"{server.url}/payments", content=b'{"amount": 500}')
    assert (outcome.status, outcome.body, outcome.replayed) == (201, RECEIPT, True)
    assert len(server.received) == 2
    first, second = (received.key for received in server.received)
    assert first is not None
    assert first == second
    assert [event.cause for event in events] == ["RemoteProtocolError"]
    assert events[0].idempotency_key == first.strip('"')
    cut, replayed = recorder.attempts
    assert (cut.number, cut.status, cut.error) == (1, None, "RemoteProtocolError")
    assert cut.retry_in is not None
    assert (replayed.number, replayed.status, replayed.error, replayed.retry_in) == (
        2,
        201,
        None,
        None,
    )


def test_b33_a_body_cut_off_every_time_ends_at_the_attempt_limit_with_its_key(
    face: Face, serve: Callable[..., CuttingServer]
) -> None:
    """When every answer's body is cut off, the call stops at `attempts` and raises the error,
    whose request carries the key every attempt sent."""
    face.policy = RetryPolicy(attempts=3, timeout=30.0, wait_initial=0.01)
    server = serve(CUT)
    with pytest.raises(httpx.RemoteProtocolError) as caught:
        face.request("POST", f"{server.url}/payments", content=b'{"amount": 500}')
    keys = {received.key for received in server.received}
    assert len(server.received) == 3
    assert keys == {f'"{_key_of(caught.value)}"'}


@pytest.mark.parametrize("cut", [LARGE_CUT, CHUNKED_CUT], ids=["large", "chunked"])
def test_b32_the_key_of_a_body_left_to_the_caller_is_on_the_errors_request(
    face: Face, serve: Callable[..., CuttingServer], cut: bytes
) -> None:
    """A body too large, or of no declared length, is read by the caller's client, so its cut is
    not retried; the error's request carries the key, and sending again with it is replayed."""
    server = serve(cut, REPLAY)
    url = f"{server.url}/payments"
    with pytest.raises(httpx.RemoteProtocolError) as caught:
        face.request("POST", url, content=b'{"amount": 500}')
    assert len(server.received) == 1
    key = _key_of(caught.value)
    assert server.received[0].key == f'"{key}"'
    again = face.request(
        "POST", url, headers={"Idempotency-Key": f'"{key}"'}, content=b'{"amount": 500}'
    )
    assert (again.status, again.body, again.replayed) == (201, RECEIPT, True)
    assert [received.key for received in server.received] == [f'"{key}"', f'"{key}"']


@pytest.mark.parametrize("name", HTTPX_FACES)
def test_b32_a_proxy_on_the_wrapped_transport_keeps_the_key_and_retries(
    name: str, serve: Callable[..., CuttingServer]
) -> None:
    """Through a proxy set on the wrapped transport (as docs/client.md shows), every attempt
    carries the same key and is retried; a proxy set on the client skips the transport."""
    proxy = serve(UNAVAILABLE, REPLAY)
    target = "http://payments.example/payments"
    body = b'{"amount": 500}'
    if name == "sync":
        wrapped = IdempotentTransport(httpx.HTTPTransport(proxy=proxy.url), policy=FAST)
        with httpx.Client(transport=wrapped) as client:
            response = client.post(target, content=body)
        with httpx.Client(transport=IdempotentTransport(), proxy=proxy.url) as client:
            bypassed = client.post(target, content=body)
    else:

        async def send() -> tuple[httpx.Response, httpx.Response]:
            inner = httpx.AsyncHTTPTransport(proxy=proxy.url)
            wrapped = AsyncIdempotentTransport(inner, policy=FAST)
            async with httpx.AsyncClient(transport=wrapped) as client:
                response = await client.post(target, content=body)
            async with httpx.AsyncClient(
                transport=AsyncIdempotentTransport(), proxy=proxy.url
            ) as client:
                bypassed = await client.post(target, content=body)
            return response, bypassed

        response, bypassed = anyio.run(send)
    assert (response.status_code, response.extensions["idempotent_replayed"]) == (201, True)
    first, second, skipped = proxy.received
    assert first.target == second.target == target
    assert first.key is not None
    assert first.key == second.key == f'"{response.extensions["idempotency_key"]}"'
    assert "idempotency_key" not in bypassed.extensions
    assert skipped.key is None
