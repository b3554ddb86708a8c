"""`retrysafe proxy` under its resource limits, on raw sockets (B36): request body size and pace,
keys in flight per caller, and the largest response stored for replay."""

from __future__ import annotations

import contextlib
import hashlib
import select
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import retrysafe
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.cli import app
from tests.proxy.conftest import GATE_SECONDS, Proxy, Recorder, Upstream, upstream_entered
from tests.proxy.raw import RawResponse, exchange, read_response

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
CALLER = b"Authorization: Bearer limits-test\r\n"
"""The credential most requests send: the proxy scopes keys by it (B8)."""
OTHER_CALLER = b"Authorization: Bearer limits-other\r\n"
MAX_BODY = 1000
MAX_RESPONSE = 100
BODY_TIMEOUT = 0.5
SOCKET_SECONDS = 10.0
"""The bound on every socket wait: far above the body timeout, so only a hang reaches it."""
_TRICKLE_PAUSE = 0.05


@dataclass(frozen=True)
class Limited:
    """A running proxy under test: its port and the SQLite file of its store."""

    port: int
    store: Path


@pytest.fixture(scope="module")
def limited(
    upstream: Upstream, proxies: Start, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Limited]:
    """Three proxies before the upstream, started at once: `guarded` (small body cap, short
    body timeout), `capped` (one key in flight per caller, no wait) and `small` (small stored
    responses)."""
    directory = tmp_path_factory.mktemp("limits")
    flags = {
        "guarded": ["--max-body-size", str(MAX_BODY), "--body-timeout", str(BODY_TIMEOUT)],
        "capped": ["--max-in-flight-per-scope", "1", "--wait", "0"],
        "small": ["--max-response-size", str(MAX_RESPONSE)],
    }
    stores = {name: directory / f"{name}.db" for name in flags}
    started = proxies(
        [
            (["--upstream", upstream.url, "--store", f"sqlite:///{stores[name]}", *args], None)
            for name, args in flags.items()
        ]
    )
    return {
        name: Limited(int(proxy.url.rsplit(":", 1)[1]), stores[name])
        for name, proxy in zip(flags, started, strict=True)
    }


def records(store_path: Path, key: str | None = None) -> int:
    """Return how many records the store holds (not its scope secret); only `key`'s if given."""
    store = retrysafe.open_store(f"sqlite:///{store_path}")
    try:
        found = [
            r
            for r in store.list_records(limit=1000)
            if r.identity.namespace != SECRET_IDENTITY.namespace
        ]
        return sum(key is None or r.identity.key == key for r in found)
    finally:
        store.close()


def new_key() -> str:
    """Return a fresh Idempotency-Key."""
    return str(uuid.uuid4())


def head(target: str, *, key: str | None, caller: bytes = CALLER, framing: bytes = b"") -> bytes:
    """Return the head of a POST to `target` from `caller`, with `key` if given. The connection
    is kept alive, so a refusal that closes it is the proxy's own doing."""
    keyed = f'Idempotency-Key: "{key}"\r\n'.encode() if key is not None else b""
    start = f"POST {target} HTTP/1.1\r\nHost: proxy.test\r\n".encode()
    return start + caller + keyed + framing + b"\r\n"


def request(target: str, *, key: str | None, caller: bytes = CALLER, body: bytes = b"{}") -> bytes:
    """Return the bytes of a whole POST with a Content-Length."""
    length = f"Content-Length: {len(body)}\r\n".encode()
    return head(target, key=key, caller=caller, framing=length) + body


def chunked(target: str, *, key: str | None, chunks: list[bytes]) -> bytes:
    """Return the bytes of a whole POST whose body is sent in `chunks` (no length announced)."""
    framed = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks)
    return head(target, key=key, framing=b"Transfer-Encoding: chunked\r\n") + framed + b"0\r\n\r\n"


@contextlib.contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    """A socket to the proxy whose every wait is bounded."""
    with socket.create_connection(("127.0.0.1", port), SOCKET_SECONDS) as sock:
        sock.settimeout(SOCKET_SECONDS)
        yield sock


def send_then_stall(port: int, data: bytes) -> RawResponse:
    """Send `data` (a head and part of its body), send nothing more, and return the answer;
    fail unless the proxy then closes the connection."""
    with connection(port) as sock:
        sock.sendall(data)
        response = read_response(sock)
        assert response is not None
        assert_closed(sock)
    return response


def assert_closed(sock: socket.socket) -> None:
    """Fail unless the server closes `sock` (within the socket's timeout)."""
    with contextlib.suppress(ConnectionResetError):  # a reset closes it too
        assert sock.recv(1) == b""


def assert_refused(response: RawResponse | None, status: int, slug: str) -> None:
    """Fail unless `response` is the proxy's `slug` problem, closing the connection."""
    assert response is not None
    assert response.status == status, response
    assert response.problem()["type"].endswith(f"/proxy/#{slug}"), response
    assert response.headers["connection"] == "close"
    assert response.headers["cache-control"] == "no-store"


_STALLED_BODIES = {
    "content-length": (b"Content-Length: 100\r\n", b'{"amount": '),
    "chunked": (b"Transfer-Encoding: chunked\r\n", b'b\r\n{"amount": \r\n'),
}
"""A head's framing and the first bytes of a body that never completes."""


def stalled(target: str, *, key: str | None, framing: str) -> bytes:
    """Return a head and the first bytes of a body that never completes."""
    length, start = _STALLED_BODIES[framing]
    return head(target, key=key, framing=length) + start


@pytest.mark.parametrize("framing", list(_STALLED_BODIES))
def test_b36_a_stalled_keyed_body_is_a_408_and_claims_nothing(
    limited: dict[str, Limited], recorder: Recorder, framing: str
) -> None:
    """A keyed request whose body stops arriving gets the 408 body-timeout problem and a
    closed connection; nothing reaches the upstream (`/upload` counts on entry), nothing is
    stored, and the key stays free for the whole request."""
    proxy, key = limited["guarded"], new_key()
    before = records(proxy.store)
    response = send_then_stall(proxy.port, stalled("/upload", key=key, framing=framing))
    assert_refused(response, 408, "body-timeout")
    assert sum(recorder.calls.values()) == 0
    assert records(proxy.store) == before
    whole = exchange(proxy.port, request("/upload", key=key, body=b'{"amount": 1}'))
    assert whole is not None
    assert whole.status == 201, whole
    assert whole.body.startswith(b'{"size":13,')
    assert "idempotent-replayed" not in whole.headers
    assert recorder.calls["/upload"] == 1
    assert records(proxy.store, key) == 1


def test_b36_a_stalled_keyless_body_is_a_408_and_never_reaches_the_upstream_whole(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """A request without a key, whose body is streamed to the upstream as it comes, gets the
    408 problem when the body stalls; the upstream never gets a whole request (its handler
    counts only after reading the whole body), and a whole request afterwards is served."""
    proxy = limited["guarded"]
    before = records(proxy.store)
    response = send_then_stall(proxy.port, stalled("/payments", key=None, framing="content-length"))
    assert_refused(response, 408, "body-timeout")
    assert recorder.calls["/payments"] == 0
    assert records(proxy.store) == before
    whole = exchange(proxy.port, request("/payments", key=None, body=b'{"amount": 1}'))
    assert whole is not None
    assert whole.status == 201, whole
    assert recorder.calls["/payments"] == 1


def test_b36_a_trickling_body_is_cut_off_at_the_body_timeout(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """The body timeout bounds the whole body, not the pause between bytes: a client sending
    one byte at a time, never pausing long, still gets the 408 before its body is complete."""
    proxy, key = limited["guarded"], new_key()
    before = records(proxy.store)
    body = b'{"note": "' + b"x" * 88 + b'"}'
    length = f"Content-Length: {len(body)}\r\n".encode()
    with connection(proxy.port) as sock:
        sock.sendall(head("/upload", key=key, framing=length))
        sent = 0
        # Each pause ends early once the answer is readable: the loop stops sending then.
        while sent < len(body) and not select.select([sock], [], [], _TRICKLE_PAUSE)[0]:
            try:
                sock.sendall(body[sent : sent + 1])
            except OSError:  # closed just after the last pause: the answer is there to read
                break
            sent += 1
        response = read_response(sock)
        assert_closed(sock)
    assert sent < len(body)
    assert_refused(response, 408, "body-timeout")
    assert sum(recorder.calls.values()) == 0
    assert records(proxy.store) == before


def test_b36_a_head_sent_line_by_line_is_closed_unanswered(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """A slowloris that never finishes its request head is closed by the proxy (uvicorn alone
    waits forever for a first head): nothing reaches the upstream or the store."""
    proxy = limited["guarded"]
    before = records(proxy.store)
    with connection(proxy.port) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: proxy.test\r\n")
        assert_closed(sock)  # no answer, as there is no request yet; a timeout fails
    assert sum(recorder.calls.values()) == 0
    assert records(proxy.store) == before


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b36_an_announced_body_over_the_cap_is_a_413_before_it_is_read(
    limited: dict[str, Limited], recorder: Recorder, keyed: bool
) -> None:
    """A Content-Length above --max-body-size gets the 413 body-too-large problem at once,
    while no body byte has been sent (waiting for it would end in the 408 instead)."""
    proxy = limited["guarded"]
    before = records(proxy.store)
    length = f"Content-Length: {MAX_BODY + 1}\r\n".encode()
    raw = head("/upload", key=new_key() if keyed else None, framing=length)
    response = send_then_stall(proxy.port, raw)
    assert_refused(response, 413, "body-too-large")
    assert sum(recorder.calls.values()) == 0
    assert records(proxy.store) == before


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b36_a_chunked_body_growing_past_the_cap_is_a_413(
    limited: dict[str, Limited], recorder: Recorder, keyed: bool
) -> None:
    """A chunked body that announces no length and grows past --max-body-size gets the 413
    problem; nothing is stored, a keyed request (read whole first) reaches nothing upstream,
    and a keyless one (streamed as it comes) never reaches it whole."""
    proxy = limited["guarded"]
    before = records(proxy.store)
    half = b" " * (MAX_BODY // 2)
    target, key = ("/upload", new_key()) if keyed else ("/payments", None)
    raw = chunked(target, key=key, chunks=[half, half, b"{}"])
    assert_refused(exchange(proxy.port, raw), 413, "body-too-large")
    if keyed:
        assert sum(recorder.calls.values()) == 0
    else:  # `/payments` counts once it has read a whole body
        assert recorder.calls["/payments"] == 0
    assert records(proxy.store) == before


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b36_a_body_exactly_at_the_cap_is_forwarded_whole(
    limited: dict[str, Limited], recorder: Recorder, keyed: bool, framing: str
) -> None:
    """A body of exactly --max-body-size bytes reaches the upstream whole, once."""
    proxy, key = limited["guarded"], new_key() if keyed else None
    body = bytes(range(256)) * (MAX_BODY // 256) + b"z" * (MAX_BODY % 256)
    assert len(body) == MAX_BODY
    if framing == "chunked":
        raw = chunked("/upload", key=key, chunks=[body[:300], body[300:]])
    else:
        raw = request("/upload", key=key, body=body)
    response = exchange(proxy.port, raw)
    assert response is not None
    assert response.status == 201, response
    assert response.body.startswith(
        b'{"size":%d,"sha256":"%s"' % (MAX_BODY, hashlib.sha256(body).hexdigest().encode())
    )
    assert recorder.calls["/upload"] == 1
    if key is not None:
        assert records(proxy.store, key) == 1


def test_b36_a_caller_over_its_in_flight_cap_gets_429_others_are_served(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """With --max-in-flight-per-scope 1, a caller's second key while its first is running gets
    the 429 too-many-in-flight problem with Retry-After, is not forwarded and leaves no record;
    another caller, and the same caller without a key, are served; once the first key is done
    the caller's keys are served again, the refused one included."""
    proxy = limited["capped"]
    first, refused, later = new_key(), new_key(), new_key()
    held: list[RawResponse | None] = []
    holder = threading.Thread(
        target=lambda: held.append(exchange(proxy.port, request("/gate", key=first)))
    )
    holder.start()
    try:
        upstream_entered(recorder)
        over = exchange(proxy.port, request("/payments", key=refused))
        assert over is not None
        assert over.status == 429, over
        assert over.problem()["type"].endswith("#too-many-in-flight")
        assert over.headers["retry-after"] == "1"
        assert records(proxy.store, refused) == 0
        other = exchange(proxy.port, request("/payments", key=new_key(), caller=OTHER_CALLER))
        keyless = exchange(proxy.port, request("/payments", key=None))
        assert [r.status if r else None for r in (other, keyless)] == [201, 201]
        assert recorder.calls["/payments"] == 2
    finally:
        recorder.gate.set()
        holder.join(GATE_SECONDS + SOCKET_SECONDS)
    assert not holder.is_alive()
    assert [r.status if r else None for r in held] == [201]
    for key in (refused, later):
        served = exchange(proxy.port, request("/payments", key=key))
        assert served is not None
        assert served.status == 201, served
        assert "idempotent-replayed" not in served.headers
    assert recorder.calls == {"/gate": 1, "/payments": 4}
    assert [records(proxy.store, key) for key in (first, refused, later)] == [1, 1, 1]


def _streamed(size: int) -> bytes:
    """Return the body the upstream's `/stream?size=size&chunks=10` sends."""
    step = -(-size // 10)
    return b"".join(bytes([65 + i]) * min(step, size - i * step) for i in range(10))


def test_b36_a_response_over_the_stored_size_reaches_the_client_once_and_is_not_rerun(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """A response above --max-response-size is streamed whole to the first client; a retry is
    not forwarded again and gets the 410 response-not-stored problem, marked as a replay."""
    proxy, key = limited["small"], new_key()
    size = MAX_RESPONSE * 10
    first = exchange(proxy.port, request(f"/stream?size={size}&chunks=10", key=key))
    assert first is not None
    assert first.status == 201, first
    assert first.body == _streamed(size)
    for _ in range(2):
        retry = exchange(proxy.port, request(f"/stream?size={size}&chunks=10", key=key))
        assert retry is not None
        assert retry.status == 410, retry
        assert retry.problem()["type"].endswith("#response-not-stored")
        assert "status 201" in retry.problem()["detail"]
        assert retry.headers["idempotent-replayed"] == "true"
    assert recorder.calls["/stream"] == 1
    assert records(proxy.store, key) == 1


def test_b36_a_response_exactly_at_the_stored_size_is_replayed(
    limited: dict[str, Limited], recorder: Recorder
) -> None:
    """A response of exactly --max-response-size bytes is stored and replayed byte for byte."""
    proxy, key = limited["small"], new_key()
    target = f"/stream?size={MAX_RESPONSE}&chunks=10"
    first = exchange(proxy.port, request(target, key=key))
    replay = exchange(proxy.port, request(target, key=key))
    assert first is not None
    assert replay is not None
    assert (first.status, first.body) == (201, _streamed(MAX_RESPONSE))
    assert (replay.status, replay.body) == (201, first.body)
    assert replay.headers["idempotent-replayed"] == "true"
    assert recorder.calls["/stream"] == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--body-timeout", "0"], "body timeout"),
        (["--body-timeout", "-1"], "body timeout"),
        (["--upstream-timeout", "10", "--upstream-deadline", "5"], "deadline"),
    ],
    ids=["zero-body-timeout", "negative-body-timeout", "timeout-past-deadline"],
)
def test_b36_bad_limits_exit_2_with_one_line(arguments: list[str], message: str) -> None:
    """A body timeout not above zero, or an upstream timeout past the deadline, is one
    `error:` line and exit code 2."""
    base = ["proxy", "--upstream", "http://127.0.0.1:3000", "--store", "memory://"]
    result = CliRunner().invoke(app, [*base, *arguments])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
