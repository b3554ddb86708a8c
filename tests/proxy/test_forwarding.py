"""What `retrysafe proxy` forwards, on raw sockets: methods as sent or not at all, the client's
headers only, no dot segment hidden behind `;` parameters, the key never made hop-by-hop, no
WebSocket, and responses framed as RFC 9110 asks (B5, B6, B11, B22, B37, B38)."""

from __future__ import annotations

import gzip
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from retrysafe.asgi import Message
from retrysafe.proxy import ProxyApp, end_to_end
from tests.proxy.conftest import Proxy, records
from tests.proxy.raw import RawResponse, RawServer, answer_ok, exchange, request

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
PAGE = b"hello " * 200
"""What `/gzip` answers, compressed when the request accepts gzip."""


def answer(head: bytes, conn: socket.socket) -> None:
    """Answer by the request's path: /gzip (gzip only when asked), /cookie (sets one),
    /status-NNN with `Content-Length: 5` and no body, /short (a body cut short), else 200."""
    path = head.split(b" ", 2)[1]
    if path.startswith(b"/gzip"):
        body, coding = PAGE, b""
        if b"\r\naccept-encoding: gzip" in head.lower():
            body, coding = gzip.compress(PAGE), b"Content-Encoding: gzip\r\n"
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nVary: Accept-Encoding\r\n"
            + coding + b"Content-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip
    elif path.startswith(b"/cookie"):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: session=first-client; Path=/\r\n"
            b"Content-Length: 2\r\nConnection: close\r\n\r\nok"
        )
    elif path.startswith(b"/status-"):
        status = path.removeprefix(b"/status-")[:3]
        conn.sendall(
            b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        )
    elif path.startswith(b"/short"):  # announces 100 bytes, sends 10, closes
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n0123456789")
    else:
        answer_ok(head, conn)


@pytest.fixture(scope="module")
def upstream_raw() -> Iterator[RawServer]:
    """The upstream: it keeps every request head it gets."""
    server = RawServer(answer)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite store of the `plain` and `prefixed` proxies, opened to count records."""
    return tmp_path_factory.mktemp("forwarding") / "keys.db"


@dataclass
class Ports:
    """The ports of this module's proxies, all before `upstream_raw`."""

    plain: int
    required: int  # --require-key
    prefixed: int  # under the upstream path prefix /public/api
    unbuffered: int  # --max-response-size 0


@pytest.fixture(scope="module")
def ports(upstream_raw: RawServer, store_path: Path, proxies: Start) -> Ports:
    """Every proxy of the module, started at once."""
    store = f"sqlite:///{store_path}"
    started = proxies(
        [
            (["--upstream", upstream_raw.url, "--store", store], None),
            (["--upstream", upstream_raw.url, "--store", "memory://", "--require-key"], None),
            (["--upstream", upstream_raw.url + "/public/api", "--store", store], None),
            (["--upstream", upstream_raw.url, "--store", "memory://",
              "--max-response-size", "0"], None),
        ]
    )  # fmt: skip
    return Ports(*(int(proxy.url.rsplit(":", 1)[1]) for proxy in started))


def sent(port: int, raw: bytes) -> RawResponse:
    """Return the proxy's answer to the request bytes `raw`; fail if it closed unanswered."""
    response = exchange(port, raw)
    assert response is not None, raw
    return response


def assert_problem(response: RawResponse, status: int, slug: str) -> None:
    """Fail unless `response` is the proxy's `slug` problem with `status`."""
    assert response.status == status, response
    assert response.problem()["type"].endswith("/proxy/#" + slug), response
    assert response.problem()["status"] == status


def head_lines(head: bytes) -> list[str]:
    """Return the header lines of a request head, lower-cased, without the request line."""
    text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    return text.split("\r\n")[1:]


def header_names(head: bytes) -> list[str]:
    """Return the header names of a request head, lower-cased, in order."""
    return [line.split(":", 1)[0] for line in head_lines(head)]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b5_a_method_not_in_upper_case_is_a_501_and_never_forwarded(
    ports: Ports, upstream_raw: RawServer, store_path: Path, keyed: bool
) -> None:
    """`post`, `Post` or `pAtch` (not POST or PATCH: methods are case-sensitive) gets the
    501 unsupported-method problem on every attempt, so an HTTP client that upper-cases it
    never sends it past the idempotency check; nothing is forwarded or stored. Methods in
    upper case, ones the middleware does not cover too, are forwarded as sent."""
    before, seen = records(store_path), upstream_raw.count()
    for method in (b"post", b"Post", b"pAtch", b"get"):
        raw = request("/payments", method=method, key=keyed)
        for _ in range(2):
            assert_problem(sent(ports.plain, raw), 501, "unsupported-method")
    assert upstream_raw.count() == seen
    assert records(store_path) == before
    for method in (b"POST", b"PROPFIND", b"M-SEARCH"):
        assert sent(ports.plain, request("/m", method=method, key=False)).status == 200
    assert [head.split(b" ", 1)[0] for head in upstream_raw.requests[seen:]] == [
        b"POST",
        b"PROPFIND",
        b"M-SEARCH",
    ]


def test_b6_require_key_is_not_bypassed_by_a_lower_case_post(
    ports: Ports, upstream_raw: RawServer
) -> None:
    """With --require-key, a keyless `post` is refused like a keyless POST: it never reaches
    the upstream (as the POST it would have become)."""
    seen = upstream_raw.count()
    assert_problem(sent(ports.required, request("/pay", method=b"post", key=False)), 501,
                   "unsupported-method")  # fmt: skip
    refused = sent(ports.required, request("/pay", method=b"POST", key=False))
    assert refused.status == 400
    assert refused.problem()["type"].endswith("#key-required")
    assert upstream_raw.count() == seen


def test_b11_the_upstream_gets_the_clients_headers_only(
    ports: Ports, upstream_raw: RawServer
) -> None:
    """The forwarded request carries the client's headers and the proxy's Host and
    X-Forwarded-*, and none of its HTTP client's defaults (Accept, Accept-Encoding,
    User-Agent)."""
    seen = upstream_raw.count()
    for extra in (b"", b"User-Agent: raw-test/1\r\nAccept: text/plain\r\n"):
        assert sent(ports.plain, request("/echo", method=b"GET", headers=extra, key=False,
                                         body=b"")).status == 200  # fmt: skip
    bare, chosen = upstream_raw.requests[seen:]
    assert set(header_names(bare)).isdisjoint({"accept", "accept-encoding", "user-agent"})
    assert "user-agent: raw-test/1" in head_lines(chosen)
    assert "accept: text/plain" in head_lines(chosen)
    assert header_names(chosen).count("user-agent") == 1
    assert "accept-encoding" not in header_names(chosen)


def test_b11_a_client_that_asked_for_no_gzip_gets_and_replays_identity(ports: Ports) -> None:
    """A keyed POST without Accept-Encoding gets the upstream's identity body, and so does its
    replay (B11: the stored representation is the first one); one that asks for gzip gets it."""
    key = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode()
    first, replay = (sent(ports.plain, request("/gzip", headers=key, key=False)) for _ in range(2))
    assert (first.status, first.body) == (201, PAGE)
    assert "content-encoding" not in first.headers
    assert (replay.status, replay.body) == (201, PAGE)
    assert replay.headers["idempotent-replayed"] == "true"
    asked = sent(ports.plain, request("/gzip", headers=b"Accept-Encoding: gzip\r\n"))
    assert asked.headers["content-encoding"] == "gzip"
    assert gzip.decompress(asked.body) == PAGE


def test_a_cookie_the_upstream_sets_for_one_client_never_reaches_another(
    ports: Ports, upstream_raw: RawServer
) -> None:
    """A Set-Cookie from the upstream goes to the client it answered; the proxy keeps none,
    so a later client's request reaches the upstream without that cookie."""
    seen = upstream_raw.count()
    first = sent(ports.plain, request("/cookie", method=b"GET", key=False, body=b""))
    assert first.headers["set-cookie"].startswith("session=first-client")
    other = sent(ports.plain, request("/cookie/other", method=b"GET", key=False, body=b""))
    assert other.status == 200
    later = upstream_raw.requests[seen + 1]
    assert "cookie" not in header_names(later), later


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b37_a_dot_segment_before_its_parameters_is_400(
    ports: Ports, upstream_raw: RawServer, store_path: Path, keyed: bool
) -> None:
    """A segment that is `.` or `..` before its first `;` (literal or `%3B`, dots literal or
    encoded), which Tomcat, Jetty and Spring resolve as a dot segment, is a 400
    invalid-target problem: nothing reaches the upstream, nothing is stored. A `;` after any
    other segment, or after dots that are not the whole segment, is forwarded as sent."""
    before, seen = records(store_path), upstream_raw.count()
    for target in ["/..;/..;/admin", "/..;x/..;x/admin", "/.;/admin", "/%2e%2e;/%2e%2e;/admin",
                   "/..%3B/admin", "/..%3bjsessionid=1/admin", "/a/.;x", "/%2E;a=b/x",
                   "/..;a%2F..;/admin", "/.%2e;/admin?q=1"]:  # fmt: skip
        assert_problem(sent(ports.prefixed, request(target, key=keyed)), 400, "invalid-target")
    assert upstream_raw.count() == seen
    assert records(store_path) == before
    for target in ["/a;v=1/b;..", "/..x;/y%3B..", "/;/x"]:
        assert sent(ports.prefixed, request(target, key=False)).status == 200
    assert [head.split(b" ", 2)[1] for head in upstream_raw.requests[seen:]] == [
        b"/public/api/a;v=1/b;..",
        b"/public/api/..x;/y%3B..",
        b"/public/api/;/x",
    ]


@pytest.mark.parametrize(
    "connection", [b"Idempotency-Key", b"keep-alive, IDEMPOTENCY-KEY"], ids=["alone", "listed"]
)
def test_b38_a_connection_header_naming_the_key_is_a_400(
    ports: Ports, upstream_raw: RawServer, store_path: Path, connection: bytes
) -> None:
    """A keyed request whose Connection header names Idempotency-Key (which would have the key
    dropped on its way to the upstream, while the proxy tracks it) is the 400 hop-by-hop-key
    problem; nothing is forwarded or stored."""
    before, seen = records(store_path), upstream_raw.count()
    raw = request("/payments", headers=b"Connection: " + connection + b"\r\n")
    assert_problem(sent(ports.plain, raw), 400, "hop-by-hop-key")
    assert upstream_raw.count() == seen
    assert records(store_path) == before


def test_b38_connection_cannot_drop_the_headers_the_proxy_manages() -> None:
    """`end_to_end` drops what Connection names, but never Host, Content-Length or
    Idempotency-Key."""
    kept = end_to_end(
        [
            (b"Connection", b"Host, content-length, Idempotency-Key, X-Hop"),
            (b"Host", b"proxy.test"),
            (b"Content-Length", b"2"),
            (b"Idempotency-Key", b'"k"'),
            (b"X-Hop", b"1"),
        ]
    )
    assert kept == [(b"host", b"proxy.test"), (b"content-length", b"2"),
                    (b"idempotency-key", b'"k"')]  # fmt: skip


@pytest.mark.parametrize("status", [204, 304])
def test_b37_no_content_length_is_sent_with_a_204_or_304(ports: Ports, status: int) -> None:
    """An upstream's Content-Length in a 204 or 304 (RFC 9110 section 8.6: forbidden, or only
    the length a 200 would have had) is dropped; a 200's is kept."""
    response = sent(ports.plain, request(f"/status-{status}", method=b"GET", key=False, body=b""))
    assert response.status == status
    assert "content-length" not in response.headers, response
    ok = sent(ports.plain, request("/plain", method=b"GET", key=False, body=b""))
    assert ok.headers["content-length"] == "8"


def test_a_websocket_upgrade_is_a_501_problem(ports: Ports, upstream_raw: RawServer) -> None:
    """`Upgrade: websocket` gets the 501 unsupported-upgrade problem, with no WebSocket
    library installed too (where uvicorn passes it on as a plain GET); nothing is forwarded.
    Another upgrade (h2c) is ignored: the request is forwarded without it."""
    seen = upstream_raw.count()
    websocket = (
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
    )
    for upgrade in (websocket, websocket.replace(b"websocket", b"WebSocket/13, h2c", 1)):
        raw = request("/ws", method=b"GET", key=False, body=b"", headers=upgrade)
        raw = raw.replace(b"Connection: close", b"Connection: close, Upgrade")
        assert_problem(sent(ports.plain, raw), 501, "unsupported-upgrade")
    assert upstream_raw.count() == seen
    h2c = b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    raw = request("/h2c", method=b"GET", key=False, body=b"", headers=h2c)
    raw = raw.replace(b"Connection: close", b"Connection: close, Upgrade, HTTP2-Settings")
    assert sent(ports.plain, raw).status == 200
    assert "upgrade" not in header_names(upstream_raw.requests[seen])


@pytest.mark.anyio
async def test_a_websocket_scope_gets_the_problem_where_the_server_can_send_it() -> None:
    """Under a server with a WebSocket library (a `websocket` scope), the proxy denies the
    handshake with the same 501 problem when the server offers to send one, else closes."""
    sent_messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent_messages.append(message)

    async with httpx.AsyncClient() as client:
        app = ProxyApp("http://127.0.0.1:9", client=client)
        denial: dict[str, object] = {"websocket.http.response": {}}
        for extensions in (denial, {}):
            scope = {"type": "websocket", "path": "/ws", "headers": [], "extensions": extensions}
            await app(scope, receive, send)
    start, body, close = sent_messages
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 501)
    assert b"#unsupported-upgrade" in body["body"]
    assert close == {"type": "websocket.close", "code": 1003}


def test_b22_max_response_size_0_streams_every_body(ports: Ports) -> None:
    """`--max-response-size 0` is a size, not "unset": a response body is streamed, not read
    whole first, so one the upstream cuts short reaches the client as sent until the break
    (where a buffering proxy answers 502)."""
    streamed = sent(ports.unbuffered, request("/short", key=False))
    assert (streamed.status, streamed.body) == (201, b"0123456789")
    buffered = sent(ports.plain, request("/short", key=False))
    assert_problem(buffered, 502, "upstream-failed")
