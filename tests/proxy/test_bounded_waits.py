"""`retrysafe proxy` holds nothing for a client that is gone or never finishes (B36), spoofs
no forwarding header through an upstream that reads `_` as `-` (B37), and logs no password
and no traceback. Real proxy processes, a raw upstream, raw client sockets."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.proxy.conftest import StderrLines, Upstream, start_proxies, stop_proxies
from tests.proxy.raw import RawResponse, RawServer, exchange, read_response

_WAIT = 15.0
"""The bound on every wait for the proxy or the upstream."""
_STREAMED = 65536
"""--max-response-size: an answer past it is streamed."""


class EndlessUpstream:
    """A raw upstream: `/endless...` answers with a chunked body that never ends, until the
    proxy hangs up (then `hung_up(path)` is set); `/broken...` sends half of a body past the
    storable size and closes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._events: dict[tuple[str, bytes], threading.Event] = {}
        self.server = RawServer(self._behave)

    def event(self, kind: str, path: str) -> threading.Event:
        """Return the event `kind` ("got" or "hung_up") of `path`."""
        with self._lock:
            return self._events.setdefault((kind, path.encode()), threading.Event())

    def count(self, path: str) -> int:
        """Return how many requests for `path` reached the upstream."""
        return sum(head.split(b" ", 2)[1] == path.encode() for head in self.server.requests)

    def _behave(self, head: bytes, conn: socket.socket) -> None:
        path = head.split(b" ", 2)[1]
        self.event("got", path.decode()).set()
        if path.startswith(b"/broken"):  # past the storable size, then the upstream is gone
            _read_body(head, conn)  # else closing with it unread resets the connection
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 300000\r\n\r\n")
            conn.sendall(b"x" * 150_000)
            return
        conn.sendall(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while not self._stopped.wait(0.01):
                conn.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
        except OSError:
            self.event("hung_up", path.decode()).set()

    def stop(self) -> None:
        """End every endless answer and stop listening."""
        self._stopped.set()
        self.server.stop()


def _read_body(head: bytes, conn: socket.socket) -> None:
    """Read the rest of the request's Content-Length body off `conn`."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    length = sum(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    left = length - len(head.split(b"\r\n\r\n", 1)[1])
    while left > 0:
        chunk = conn.recv(left)
        if not chunk:
            return
        left -= len(chunk)


@pytest.fixture(scope="module")
def endless() -> Iterator[EndlessUpstream]:
    """The raw upstream of this module's proxies."""
    server = EndlessUpstream()
    yield server
    server.stop()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed(sock: socket.socket) -> bool:
    """Whether the proxy closes `sock` within the bound (what it sends first is read)."""
    sock.settimeout(_WAIT)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except OSError:  # reset by the proxy
        return True
    return True


def _keyed(path: str, key: str, *, close: bool = False) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: proxy.test\r\nAuthorization: Bearer bounded-test\r\n"
        f'{connection}Idempotency-Key: "{key}"\r\nContent-Length: 2\r\n\r\n{{}}'
    ).encode()


@pytest.mark.parametrize(
    "head",
    [
        b"POST /../a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"post /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
        b"POST /../a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["invalid-target", "unsupported-method", "chunked"],
)
def test_b36_a_refused_request_whose_body_is_unread_has_its_connection_closed(
    head: bytes, upstream: Upstream
) -> None:
    """The proxy's own 400 or 501 to a request that announced a body, unread: the answer says
    `Connection: close` and the connection is closed, though the client goes on sending its
    body (where it stayed open for as long as the client trickled bytes: a lock-out)."""
    proxies = start_proxies([(["--upstream", upstream.url, "--body-timeout", "2"], None)])
    try:
        with socket.create_connection(("127.0.0.1", _port(proxies[0].url)), _WAIT) as sock:
            sock.settimeout(_WAIT)
            sock.sendall(head)
            response = _head_of_answer(sock)
            assert response.status in (400, 501), response
            assert response.headers.get("connection") == "close", response
            sock.sendall(b"a")  # the body goes on
            assert _closed(sock)
    finally:
        stop_proxies(proxies)


def _head_of_answer(sock: socket.socket) -> RawResponse:
    response = read_response(sock)
    assert response is not None
    return response


def _trickled_until_closed(sock: socket.socket) -> bool:
    """Send a byte every 0.2 s; whether the proxy closes `sock` within the bound."""
    sock.settimeout(0.2)
    for _ in range(int(_WAIT / 0.2)):
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            pass
        except OSError:
            return True
        try:
            sock.sendall(b"a")
        except OSError:
            return True
    return False


def test_b36_a_streamed_answer_whose_client_left_is_given_up(endless: EndlessUpstream) -> None:
    """A client that leaves a streamed answer (keyed, and not): the proxy stops reading the
    upstream at once, and the key keeps "response not stored", so the retry gets 410 at once,
    long before --upstream-deadline (where the proxy read the upstream on and on, and retries
    got 409 request-in-flight)."""
    args = ["--upstream", endless.server.url, "--store", "memory://", "--upstream-timeout",
            "60", "--upstream-deadline", "60", "--max-response-size", str(_STREAMED),
            "--wait", "10"]  # fmt: skip
    proxies = start_proxies([(args, None)])
    port = _port(proxies[0].url)
    try:
        key = str(uuid.uuid4())
        for path, request in (
            ("/endless/keyed", _keyed("/endless/keyed", key)),
            ("/endless/plain", b"GET /endless/plain HTTP/1.1\r\nHost: proxy.test\r\n\r\n"),
        ):
            with socket.create_connection(("127.0.0.1", port), _WAIT) as sock:
                sock.settimeout(_WAIT)
                sock.sendall(request)
                read = 0
                while read <= 2 * _STREAMED:  # streaming, past what could be stored
                    read += len(sock.recv(65536))
            assert endless.event("hung_up", path).wait(_WAIT), path
        retry = exchange(port, _keyed("/endless/keyed", key, close=True))
        assert retry is not None
        assert retry.status == 410, retry
        assert retry.problem()["type"].endswith("#response-not-stored")
        assert endless.count("/endless/keyed") == 1
    finally:
        stop_proxies(proxies)


def test_b36_the_metrics_port_closes_a_connection_without_a_whole_head(
    upstream: Upstream,
) -> None:
    """The metrics port bounds each request head by --body-timeout too: an idle connection
    and one trickling its head are closed (where both stayed open for ever)."""
    args = ["--upstream", upstream.url, "--body-timeout", "1", "--metrics-port", "0"]
    proxies = start_proxies([(args, None)])
    try:
        assert proxies[0].metrics is not None
        address = ("127.0.0.1", _port(proxies[0].metrics))
        with (
            socket.create_connection(address, _WAIT) as idle,
            socket.create_connection(address, _WAIT) as trickling,
        ):
            trickling.sendall(b"G")
            assert _trickled_until_closed(trickling)
            assert _closed(idle)
    finally:
        stop_proxies(proxies)


def test_b37_forwarding_headers_spelled_with_underscores_are_dropped(
    upstream: Upstream,
) -> None:
    """`X_Real_IP`, `X_Forwarded_Proto`, `X-Forwarded_Host`, `X_Forwarded_For`: a WSGI or CGI
    upstream reads each as the header the proxy drops or sets (`HTTP_X_REAL_IP`...), so none
    is forwarded (where a client could spoof them by spelling them so)."""
    proxies = start_proxies([(["--upstream", upstream.url], None)])
    try:
        sent = {
            "X_Real_IP": "6.6.6.6",
            "X_Forwarded_Proto": "https",
            "X-Forwarded_Host": "evil.example",
            "X_Forwarded_For": "6.6.6.6",
            "True_Client_IP": "6.6.6.6",
            "X_Custom": "kept",
        }
        seen = httpx.get(f"{proxies[0].url}/headers", headers=sent, timeout=_WAIT).json()
        names = {name.lower(): value for name, value in seen["headers"]}
        assert names.get("x_custom") == "kept"
        assert [name for name in names if "_" in name] == ["x_custom"]
        assert names["x-forwarded-for"] == "127.0.0.1"
        assert names["x-forwarded-proto"] == "http"
    finally:
        stop_proxies(proxies)


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("http://svc-admin:Pa55word@internal.example/x", "GET http://***@internal.example 400"),
        ("http://svc-admin:Pa55/word@slash.example/x", "GET http://***@slash.example 400"),
        ("http://svc-admin:Pa55?word@query.example/x", "GET http://*** 400"),
        ("http://svc-admin:Pa55#word@hash.example/x", "GET http://***@hash.example 400"),
        ("//svc-admin:Pa55/word@forwarded.example/x", "GET //***@forwarded.example/x 404"),
        ("//svc-admin:Pa55?word@forwarded.example/x", "GET //*** 404"),
    ],
    ids=["plain", "slash", "question-mark", "hash", "path-slash", "path-question-mark"],
)
def test_b37_the_access_log_shows_no_password_of_a_target(
    target: str, shown: str, upstream: Upstream
) -> None:
    """The access line of a target that carries a user and password, however the password is
    spelled: a refused absolute-form target shows only its scheme and host (where
    `http://svc-admin:Pa55/word@...` was logged whole, and `...Pa55?word@...` as
    `http://svc-admin:Pa55`, uvicorn's path ending at the `?`); a `//` path, forwarded, shows
    all after its last `@`, or nothing when its query holds one."""
    proxies = start_proxies([(["--upstream", upstream.url], None)])
    lines = StderrLines(proxies[0].process)
    try:
        head = f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answer = exchange(_port(proxies[0].url), head.encode())
        assert answer is not None
        assert answer.status == int(shown.rsplit(" ", 1)[1])
        lines.wait_for(shown, seconds=_WAIT)
    finally:
        stop_proxies(proxies)
    said = lines.until_exit()
    assert not [line for line in said if "Pa55" in line or "svc-admin" in line], said


def test_b22_the_cut_short_line_shows_the_target_as_the_access_log_does(
    endless: EndlessUpstream,
) -> None:
    """A streamed answer cut short for a `//user:password@host` path with an encoded CR LF:
    the WARNING line shows the target as the access line does, `//***@host/x%0d%0aFAKE`
    (where it showed the upstream's decoded path, password and CR LF included)."""
    args = ["--upstream", f"{endless.server.url}/broken", "--store", "memory://",
            "--max-response-size", str(_STREAMED)]  # fmt: skip
    proxies = start_proxies([(args, None)])
    lines = StderrLines(proxies[0].process)
    try:
        target = "//svc-admin:Pa55word@internal.example/x%0d%0aFAKE"
        answer = exchange(_port(proxies[0].url), _keyed(target, str(uuid.uuid4()), close=True))
        assert answer is not None
        assert answer.status == 201
        assert len(answer.body) < 300_000  # cut short
        shown = "POST //***@internal.example/x%0d%0aFAKE"
        lines.wait_for(f"{shown} was cut short: the upstream broke it", seconds=_WAIT)
        lines.wait_for(f"{shown} 201", seconds=_WAIT)
    finally:
        stop_proxies(proxies)
    said = lines.until_exit()
    assert not [line for line in said if "Pa55" in line or "svc-admin" in line], said
    assert not [line for line in said if "FAKE" in line and "%0d%0aFAKE" not in line], said


def test_b22_a_streamed_answer_the_upstream_breaks_is_one_line_no_traceback(
    endless: EndlessUpstream,
) -> None:
    """A streamed answer that the upstream breaks midway, keyed and not: the client's
    connection is cut, the key keeps "response not stored", and stderr has one line for each,
    never a traceback (where uvicorn printed chained tracebacks)."""
    args = ["--upstream", endless.server.url, "--store", "memory://", "--max-response-size",
            str(_STREAMED)]  # fmt: skip
    proxies = start_proxies([(args, None)])
    lines = StderrLines(proxies[0].process)
    port = _port(proxies[0].url)
    try:
        key = str(uuid.uuid4())
        for request in (
            _keyed("/broken/keyed", key, close=True),
            b"GET /broken/plain HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n",
        ):
            answer = exchange(port, request)
            assert answer is not None
            assert answer.status == 201
            assert len(answer.body) < 300_000  # cut short
        retry = exchange(port, _keyed("/broken/keyed", key, close=True))
        assert retry is not None
        assert retry.status == 410, retry
        for path in ("/broken/keyed", "/broken/plain"):
            lines.wait_for(f"{path} was cut short: the upstream broke it", seconds=_WAIT)
    finally:
        stop_proxies(proxies)
    said = lines.until_exit()
    assert not [line for line in said if "Traceback" in line or line.startswith(" ")], said
    assert sum("was cut short" in line for line in said) == 2, said
    assert not [line for line in said if "without completing" in line], said
