"""`retrysafe proxy` never forwards a request twice when its outcome is unknown (B38), and
drains what it holds on SIGTERM (B40): real proxy processes before a raw upstream."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import retrysafe
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._http.outcome import decode_outcome
from retrysafe._record import State
from tests.proxy.conftest import Proxy, start_proxies, stop_proxies
from tests.proxy.raw import RawResponse, RawServer, exchange
from tests.servers import refused_port

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
_WAIT = 15.0
"""The bound on every wait for the proxy or the upstream."""
GRACEFUL = (0, -signal.SIGTERM)
"""How a proxy exits after a graceful shutdown (uvicorn re-raises the signal it handled)."""


class Upstream:
    """A raw upstream that behaves by the request path's first segment:

    - `/slow/...` answers 201 once the test releases the path;
    - `/hang/...` never answers while the test runs (released at teardown);
    - `/cut/...` closes the connection without a byte; `/reset/...` resets it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[bytes, threading.Event] = {}
        self.server = RawServer(self._behave)

    def gate(self, path: str) -> threading.Event:
        """Return the event that lets `path` answer."""
        with self._lock:
            return self._gates.setdefault(path.encode(), threading.Event())

    def count(self, path: str) -> int:
        """Return how many requests for `path` reached the upstream."""
        return sum(head.split(b" ", 2)[1] == path.encode() for head in self.server.requests)

    def head(self, path: str) -> bytes:
        """Return the one request head that reached the upstream for `path`."""
        heads = [h for h in self.server.requests if h.split(b" ", 2)[1] == path.encode()]
        assert len(heads) == 1, heads
        return heads[0]

    def _behave(self, head: bytes, conn: socket.socket) -> None:
        path = head.split(b" ", 2)[1]
        if path.startswith(b"/cut/"):
            return
        if path.startswith(b"/reset/"):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        self.gate(path.decode()).wait(_WAIT * 2)
        body = b'{"late":"' + path + b'"}'
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def stop(self) -> None:
        """Release every held answer and stop listening."""
        with self._lock:
            for event in self._gates.values():
                event.set()
        self.server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """The raw upstream every proxy of this module forwards to."""
    server = Upstream()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ports(upstream: Upstream, proxies: Start) -> dict[str, int]:
    """Proxy ports: `quick` (0.3 s timeout, 409 at once), `deadline` (gives up after 1 s),
    `waiting` (retries wait for the outcome), `refused` (its upstream port is closed)."""
    url, closed = upstream.server.url, f"http://127.0.0.1:{refused_port()}"
    specs = {
        "quick": ["--upstream", url, "--upstream-timeout", "0.3", "--wait", "0"],
        "deadline": ["--upstream", url, "--upstream-timeout", "0.2", "--upstream-deadline", "1"],
        "waiting": ["--upstream", url, "--wait", "10"],
        "refused": ["--upstream", closed, "--wait", "0"],
    }
    started = proxies([([*args, "--store", "memory://"], None) for args in specs.values()])
    return {name: _port(proxy) for name, proxy in zip(specs, started, strict=True)}


def _port(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def post(port: int, path: str, key: str) -> RawResponse:
    """POST `path` with `key` through the proxy on `port`; return its answer."""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n"
        f"Authorization: Bearer unknown-test\r\nIdempotency-Key: {key}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()
    response = exchange(port, request)
    assert response is not None, f"no answer to POST {path}"
    return response


def settled(port: int, path: str, key: str) -> RawResponse:
    """Retry until the key is no longer in flight (409); bounded."""
    deadline = time.monotonic() + _WAIT
    while True:
        response = post(port, path, key)
        if response.status != 409 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)


def problem_type(response: RawResponse) -> str:
    """Return the last segment of the problem's `type`."""
    kind: str = response.problem()["type"]
    return kind.rsplit("#", 1)[-1].rsplit("/", 1)[-1]


def key() -> str:
    """Return a fresh key, as a structured-field string."""
    return f'"{uuid.uuid4()}"'


def test_b38_a_late_answer_is_stored_for_the_retry_and_forwarded_once(
    ports: dict[str, int], upstream: Upstream
) -> None:
    """The client gets 504 after --upstream-timeout; the claim is kept while the upstream
    works (a retry gets 409, not a second forward); its late answer is replayed."""
    path, k = "/slow/late", key()
    first = post(ports["quick"], path, k)
    assert (first.status, problem_type(first)) == (504, "upstream-timeout")
    assert "not forwarded again" in first.problem()["detail"]
    retry = post(ports["quick"], path, k)
    assert retry.status == 409, retry
    upstream.gate(path).set()
    replay = settled(ports["quick"], path, k)
    assert replay.status == 201, replay
    assert replay.body == b'{"late":"/slow/late"}'
    assert replay.headers.get("idempotent-replayed") == "true"
    assert upstream.count(path) == 1


def test_b38_past_the_deadline_retries_get_outcome_unknown_forever(
    ports: dict[str, int], upstream: Upstream
) -> None:
    """No answer by --upstream-deadline: retries get the stored `outcome-unknown` problem, and
    the request is not forwarded again, even once the upstream could answer."""
    path, k = "/hang/deadline", key()
    assert post(ports["deadline"], path, k).status == 504
    unknown = settled(ports["deadline"], path, k)
    assert (unknown.status, problem_type(unknown)) == (502, "outcome-unknown"), unknown
    assert "keys delete" in unknown.problem()["detail"]
    upstream.gate(path).set()
    again = post(ports["deadline"], path, k)
    assert (again.status, problem_type(again)) == (502, "outcome-unknown")
    assert upstream.count(path) == 1


@pytest.mark.parametrize("how", ["cut", "reset"])
def test_b38_an_exchange_broken_after_sending_is_never_forwarded_again(
    ports: dict[str, int], upstream: Upstream, how: str
) -> None:
    """The upstream got the request, then closed or reset the connection: 502 now, and every
    retry gets `outcome-unknown` instead of a second forward."""
    path, k = f"/{how}/once", key()
    first = post(ports["waiting"], path, k)
    assert (first.status, problem_type(first)) == (502, "upstream-failed"), first
    for _ in range(2):
        retry = post(ports["waiting"], path, k)
        assert (retry.status, problem_type(retry)) == (502, "outcome-unknown"), retry
    assert upstream.count(path) == 1


def test_b38_an_unreachable_upstream_releases_the_claim(ports: dict[str, int]) -> None:
    """Connection refused: the upstream surely did not get the request, so the claim is
    released and the retry is forwarded (and refused) again, not held as unknown."""
    k = key()
    for _ in range(2):
        response = post(ports["refused"], "/slow/refused", k)
        assert (response.status, problem_type(response)) == (502, "upstream-unreachable")


def test_b38_the_key_is_forwarded_to_the_upstream(
    ports: dict[str, int], upstream: Upstream
) -> None:
    """The upstream sees the client's Idempotency-Key, so one that dedups covers a proxy
    crash (when the proxy's lease decides, B16)."""
    path, k = "/slow/key", key()
    upstream.gate(path).set()
    assert post(ports["waiting"], path, k).status == 201
    assert f"idempotency-key: {k}".encode() in upstream.head(path).lower()


@pytest.fixture
def drained(upstream: Upstream, tmp_path: Path) -> Iterator[Callable[..., tuple[Proxy, str]]]:
    """Start a proxy on a SQLite store for one test; stop it at the end if it still runs."""
    started: list[Proxy] = []

    def start(*args: str) -> tuple[Proxy, str]:
        store = f"sqlite:///{tmp_path / 'keys.db'}"
        command = ["--upstream", upstream.server.url, "--store", store, "--wait", "0", *args]
        started.extend(start_proxies([(command, None)]))
        return started[-1], store

    yield start
    stop_proxies(started)


def stored(store_url: str, path: str) -> tuple[State, int, bytes]:
    """Return the state, stored status and body of the one record the proxy kept."""
    store = retrysafe.open_store(store_url)
    try:
        records = store.list_records(limit=100)
    finally:
        store.close()
    mine = [r for r in records if r.identity.namespace != SECRET_IDENTITY.namespace]
    assert len(mine) == 1, (path, mine)
    assert mine[0].outcome is not None, mine[0]
    outcome = decode_outcome(mine[0].outcome)
    return mine[0].state, outcome.status, outcome.body


def test_b40_sigterm_waits_for_the_background_call_and_stores_its_answer(
    drained: Callable[..., tuple[Proxy, str]], upstream: Upstream
) -> None:
    """SIGTERM while an upstream call runs in the background: the proxy waits for it, stores
    its answer, and only then exits. The answer comes after the signal was sent."""
    proxy, store = drained("--upstream-timeout", "0.2", "--upstream-deadline", "30")
    path = "/slow/drain"
    assert post(_port(proxy), path, key()).status == 504
    proxy.process.terminate()
    upstream.gate(path).set()
    assert proxy.process.wait(_WAIT) in GRACEFUL
    state, status, body = stored(store, path)
    assert (state, status, body) == (State.DONE, 201, b'{"late":"/slow/drain"}')
    assert upstream.count(path) == 1


def test_b40_sigterm_past_the_deadline_keeps_the_outcome_unknown(
    drained: Callable[..., tuple[Proxy, str]], upstream: Upstream
) -> None:
    """SIGTERM while the upstream never answers: at the deadline the proxy stores
    `outcome-unknown` and exits; nothing whose outcome is unknown is released."""
    proxy, store = drained("--upstream-timeout", "0.2", "--upstream-deadline", "1")
    path = "/hang/drain"
    assert post(_port(proxy), path, key()).status == 504
    proxy.process.terminate()
    assert proxy.process.wait(_WAIT) in GRACEFUL
    state, status, body = stored(store, path)
    assert (state, status) == (State.DONE, 502)
    assert b"outcome-unknown" in body
