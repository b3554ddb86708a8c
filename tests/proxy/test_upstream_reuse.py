"""`retrysafe proxy` reuses a connection to the upstream only when nothing follows the last
answer on it: bytes an upstream sends past an answer's end never become another caller's
answer (B35), nor cost a request its outcome (B38). A real proxy process before a raw upstream
that keeps its connections alive, as real services do."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import h11
import pytest

from retrysafe.proxy._upstream import holds_more
from tests.proxy.conftest import Proxy, start_proxies, stop_proxies
from tests.proxy.raw import RawResponse, exchange

_TIMEOUT = 15.0


@dataclass(frozen=True)
class Seen:
    """One request as the upstream read it: on which connection, and from whom."""

    connection: int
    method: bytes
    target: bytes
    caller: bytes


class KeepAliveUpstream:
    """A raw upstream that answers every request on a connection until the proxy closes it,
    misbehaving by path:

    - `/no-content-body`: a 204 that carries a body;
    - HEAD anything: the body a GET would get;
    - `/surplus`: one byte more than its Content-Length (counted in characters, not bytes);
    - `/twice`: its answer, naming its caller, twice;
    - `/late-body`: a 204, and a stray body sent only once the next request comes;
    - anything else: 201 with `{"n": <request number>, "for": <caller>}`.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self.seen: list[Seen] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def one(self, target: bytes) -> Seen:
        """Return the one request for `target` the upstream got."""
        with self._lock:
            found = [seen for seen in self.seen if seen.target == target]
        assert len(found) == 1, found
        return found[0]

    def stop(self) -> None:
        """Stop listening."""
        self._listener.close()

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            number += 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(_TIMEOUT)
            reader = _Reader(conn)
            owed = b""  # a stray body, sent when the next request comes
            while (head := reader.head()) is not None:
                method, target, caller = head
                with self._lock:
                    self.seen.append(Seen(number, method, target, caller))
                    count = len(self.seen)
                answer, later = _answer(method, target, caller, count)
                conn.sendall(owed + answer)
                owed = later


def _answer(method: bytes, target: bytes, caller: bytes, count: int) -> tuple[bytes, bytes]:
    """Return what to send now for a request, and what to send before the next answer."""
    body = json.dumps({"n": count, "for": caller.decode()}).encode()
    created = b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    path = target.split(b"?", 1)[0]
    if method == b"HEAD":
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body), b""
    if path == b"/no-content-body":
        return b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n{}", b""
    if path == b"/surplus":
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ncaf\xc3\xa9!", b""
    if path == b"/twice":
        return created + created, b""
    if path == b"/late-body":
        return b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n", b"{}"
    return created, b""


class _Reader:
    """Reads request heads (and their Content-Length bodies) off one connection."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._buffer = b""

    def head(self) -> tuple[bytes, bytes, bytes] | None:
        """Return the next request's method, target and Authorization; None at the end."""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._conn.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        fields = dict(line.split(b":", 1) for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, value in fields.items()}
        length = int(headers.get(b"content-length", b"0"))
        while len(self._buffer) < length:
            self._buffer += self._conn.recv(65536)
        self._buffer = self._buffer[length:]
        return method, target, headers.get(b"authorization", b"")


@pytest.fixture(scope="module")
def upstream() -> Iterator[KeepAliveUpstream]:
    """The keep-alive upstream of this module's proxy."""
    server = KeepAliveUpstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def port(upstream: KeepAliveUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The port of the one proxy of this module. Its requests go one at a time, so the pool
    holds at most one idle connection: the one the last answer came on."""
    store = f"sqlite:///{tmp_path_factory.mktemp('reuse') / 'keys.db'}"
    proxies: list[Proxy] = start_proxies([(["--upstream", upstream.url, "--store", store], None)])
    yield int(proxies[0].url.rsplit(":", 1)[1])
    stop_proxies(proxies)


def send(port: int, method: bytes, target: bytes, caller: bytes, key: str = "") -> RawResponse:
    """Send a request through the proxy as `caller`, with `key` if any; return its answer."""
    keyed = f'Idempotency-Key: "{key}"\r\n'.encode() if key else b""
    body = b"" if method == b"HEAD" else b"{}"
    request = (
        method + b" " + target + b" HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n"
        b"Authorization: " + caller + b"\r\n" + keyed
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )  # fmt: skip
    response = exchange(port, request)
    assert response is not None, f"no answer to {method!r} {target!r}"
    return response


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"POST", b"/no-content-body"),
        (b"HEAD", b"/account"),
        (b"POST", b"/surplus"),
        (b"POST", b"/twice"),
        (b"DELETE", b"/late-body"),
    ],
)
def test_b35_bytes_past_an_answer_never_answer_another_caller(
    upstream: KeepAliveUpstream, port: int, method: bytes, path: bytes
) -> None:
    """After an answer the upstream sent more bytes than (a body with a 204 or a HEAD answer,
    a Content-Length too short, the answer twice, a stray body that comes late), another
    caller's keyed POST goes on a new connection: it gets its own answer, stored and replayed
    to its retry, and is carried out once (where the reused connection gave it the first
    caller's answer, or a 502 with the outcome unknown for a request the upstream carried
    out)."""
    case = uuid.uuid4().hex.encode()
    first = send(port, method, path + b"?" + case, b"Bearer tenant-a")
    assert first.status in (200, 201, 204), first
    pay, key = b"/pay?" + case, str(uuid.uuid4())
    answer = send(port, b"POST", pay, b"Bearer tenant-b", key)
    assert answer.status == 201, answer
    assert json.loads(answer.body)["for"] == "Bearer tenant-b"
    retry = send(port, b"POST", pay, b"Bearer tenant-b", key)
    assert (retry.status, retry.body) == (201, answer.body)
    assert retry.headers["idempotent-replayed"] == "true"
    assert upstream.one(pay).connection != upstream.one(path + b"?" + case).connection


def test_b35_a_clean_connection_is_still_reused(upstream: KeepAliveUpstream, port: int) -> None:
    """Answers that end where they say go back to the pool: two requests in a row reach the
    upstream on one connection (keep-alive is kept, not given up for the check)."""
    case = uuid.uuid4().hex.encode()
    targets = [b"/pay?" + case + b"-1", b"/pay?" + case + b"-2"]
    for target in targets:
        assert send(port, b"POST", target, b"Bearer tenant-c").status == 201
    first, second = (upstream.one(target) for target in targets)
    assert first.connection == second.connection


def test_b35_a_connection_whose_state_cannot_be_read_is_not_reused() -> None:
    """The check before reuse reads httpcore's private h11 state: where httpcore keeps it
    elsewhere, the connection counts as holding more, so it is never reused blind."""
    idle = h11.Connection(h11.CLIENT)
    assert not holds_more(SimpleNamespace(_connection=SimpleNamespace(_h11_state=idle)))
    held = h11.Connection(h11.CLIENT)
    held.receive_data(b"HTTP/1.1 200 OK\r\n")
    assert holds_more(SimpleNamespace(_connection=SimpleNamespace(_h11_state=held)))
    assert holds_more(SimpleNamespace(_connection=SimpleNamespace(_h11_state=None)))
    assert holds_more(SimpleNamespace(_connection=None))
    assert holds_more(object())
