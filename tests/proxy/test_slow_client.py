"""A client that stops reading a streamed answer holds neither its key nor the shutdown: the
proxy gives the answer up, keeps the "response not stored" outcome (B22, B36), and exits on
SIGTERM (B40). Real proxies (the CLI's, and `build_proxy` on plain uvicorn) before a raw
upstream, and a client socket that never reads."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import retrysafe
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._record import State
from retrysafe.proxy import build_proxy
from tests.proxy.conftest import Proxy, start_proxies, stop_proxies
from tests.proxy.raw import RawResponse, RawServer, exchange
from tests.servers import AsgiServer

_WAIT = 15.0
"""The bound on every wait for the proxy or the upstream."""
_BIG = 16 * 1024 * 1024
"""The answer's size: far more than the sockets between proxy and client can hold."""
_STREAMED = ["--max-response-size", "65536", "--wait", "10"]
"""Answers over 64 KiB are streamed; a retry waits (up to 10 s) for the key's outcome."""
GRACEFUL = (0, -15)
"""How a proxy exits after a graceful shutdown."""
_BOUND = 1 + 1 + 10
"""How long the proxies of `test_b40_sigterm_waits_a_bounded_time...` drain at most, in
seconds: --body-timeout, plus --upstream-deadline, plus 10 s to store outcomes."""


class BigUpstream:
    """A raw upstream that answers each request with `_BIG` bytes, or an endless chunked body
    for `/endless...`, after saying it got it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._got: dict[bytes, threading.Event] = {}
        self.server = RawServer(self._behave)

    def got(self, path: str) -> threading.Event:
        """Return the event set once a request for `path` reached the upstream."""
        with self._lock:
            return self._got.setdefault(path.encode(), threading.Event())

    def count(self, path: str) -> int:
        """Return how many requests for `path` reached the upstream."""
        return sum(head.split(b" ", 2)[1] == path.encode() for head in self.server.requests)

    def _behave(self, head: bytes, conn: socket.socket) -> None:
        path = head.split(b" ", 2)[1]
        self.got(path.decode()).set()
        if path.startswith(b"/endless"):  # 16 KiB chunks, until the proxy hangs up
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not self._stopped.wait(0.02):
                conn.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
            return
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % _BIG)
        conn.sendall(b"x" * _BIG)

    def stop(self) -> None:
        """End every endless answer and stop listening."""
        self._stopped.set()
        self.server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[BigUpstream]:
    """The upstream of every proxy of this module."""
    server = BigUpstream()
    yield server
    server.stop()


def request(path: str, key: str, *, close: bool = False) -> bytes:
    """Return a keyed POST of `path`."""
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer slow-test\r\n"
        f'{connection}Idempotency-Key: "{key}"\r\nContent-Length: 2\r\n\r\n{{}}'
    ).encode()


def stalled(port: int, path: str, key: str) -> socket.socket:
    """Send a keyed POST of `path` from a socket that will never read its answer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(_WAIT)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request(path, key))
    return sock


def retried(port: int, path: str, key: str) -> RawResponse:
    """Retry the keyed POST; it waits for the first one's outcome."""
    response = exchange(port, request(path, key, close=True))
    assert response is not None
    return response


def assert_not_stored(response: RawResponse) -> None:
    """The retry gets the 410 problem: the answer went out streaming, and was not stored."""
    assert response.status == 410, response
    assert response.problem()["type"].endswith("#response-not-stored")


def cut_off(sock: socket.socket) -> bool:
    """Whether the proxy closed `sock` (read what it holds until the end, within the bound)."""
    try:
        while sock.recv(1 << 20):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset by the proxy, or closed by the test
        return True
    return True


def _port(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def test_b36_a_client_that_stops_reading_is_cut_off_and_its_key_settled(
    upstream: BigUpstream, tmp_path: Path
) -> None:
    """`retrysafe proxy`: a client that takes none of its streamed answer for --body-timeout
    has its connection aborted, and its key keeps the outcome at once: a retry waiting for it
    gets `response-not-stored`, and the upstream is not called again (where the key stayed
    in flight for as long as the client kept its connection)."""
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    args = ["--upstream", upstream.server.url, "--store", store, "--body-timeout", "1"]
    proxies = start_proxies([([*args, *_STREAMED], None)])
    try:
        path, key = "/big/cut", str(uuid.uuid4())
        with stalled(_port(proxies[0]), path, key) as sock:
            assert upstream.got(path).wait(_WAIT)
            assert_not_stored(retried(_port(proxies[0]), path, key))
            assert cut_off(sock)
        assert upstream.count(path) == 1
    finally:
        stop_proxies(proxies)


def test_b40_sigterm_does_not_wait_on_a_client_that_stops_reading(
    upstream: BigUpstream, tmp_path: Path
) -> None:
    """`retrysafe proxy` on SIGTERM while a client takes none of its streamed answer: it cuts
    that client off after --body-timeout, keeps the key's outcome, and exits (where it waited
    for as long as the client kept its connection)."""
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    args = ["--upstream", upstream.server.url, "--store", store, "--body-timeout", "1"]
    proxies = start_proxies([([*args, *_STREAMED], None)])
    process = proxies[0].process
    try:
        path = "/big/sigterm"
        with stalled(_port(proxies[0]), path, str(uuid.uuid4())):
            assert upstream.got(path).wait(_WAIT)
            process.terminate()
            assert process.wait(_WAIT) in GRACEFUL
    finally:
        stop_proxies(proxies)
    kept = retrysafe.open_store(store)
    try:
        records = kept.list_records(limit=10)
    finally:
        kept.close()
    states = [r.state for r in records if r.identity.namespace != SECRET_IDENTITY.namespace]
    assert states == [State.DONE]


def test_b36_build_proxy_gives_a_stalled_answer_up_at_the_deadline(upstream: BigUpstream) -> None:
    """`build_proxy` on plain uvicorn (no CLI): a streamed answer whose client takes none of it
    for `deadline` seconds is given up, and the key keeps its outcome; a retry waiting for it
    gets `response-not-stored` (where the key stayed in flight for as long as the client kept
    its connection)."""
    store = retrysafe.open_async_store("memory://")
    app = build_proxy(
        upstream.server.url, store=store, timeout=0.5, deadline=1, max_response_size=65536, wait=10
    )
    server = AsgiServer(app, lifespan="on")
    try:
        port, path, key = int(server.url.rsplit(":", 1)[1]), "/big/app", str(uuid.uuid4())
        with stalled(port, path, key):
            assert upstream.got(path).wait(_WAIT)
            assert_not_stored(retried(port, path, key))
        assert upstream.count(path) == 1
    finally:
        server.stop()


def test_b40_sigterm_waits_a_bounded_time_for_an_answer_that_never_ends(
    upstream: BigUpstream, tmp_path: Path
) -> None:
    """`retrysafe proxy` on SIGTERM while an endless answer streams to a client that keeps
    reading it: it waits --body-timeout plus --upstream-deadline plus 10 s, then cancels
    that answer and exits (where it waited for as long as the answer went on), saying so in
    one-line records, without a traceback."""
    store = f"sqlite:///{tmp_path / 'keys.db'}"
    args = ["--upstream", upstream.server.url, "--store", store, "--body-timeout", "1",
            "--upstream-timeout", "1", "--upstream-deadline", "1"]  # fmt: skip
    proxies = start_proxies([([*args, *_STREAMED], None)])
    process, path = proxies[0].process, "/endless"
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: proxy.test\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", _port(proxies[0])), _WAIT) as sock:
            sock.sendall(request)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
            reader = threading.Thread(target=cut_off, args=(sock,), daemon=True)
            reader.start()  # the client reads on: nothing stalls
            process.terminate()
            assert process.wait(_BOUND + _WAIT) in GRACEFUL
            reader.join(_WAIT)
        assert process.stderr is not None
        said = process.stderr.read().decode()
        # One line per record, never a traceback (where the cancelled answer had one).
        assert "Traceback" not in said, said
        assert "timeout graceful shutdown exceeded" in said
    finally:
        stop_proxies(proxies)
