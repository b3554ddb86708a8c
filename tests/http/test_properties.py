"""Property tests of Idempotency-Key parsing through the middleware (B1-B4).

Arbitrary header bytes never crash the middleware and never reach the app as a malformed key:
the app runs exactly when `parse_key` accepts the header lines, and otherwise the client gets
the 400 problem. In-process runs feed any bytes and any number of header lines, which real
servers would refuse to carry; the real-server runs send single lines over raw sockets.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrysafe._errors import InvalidKeyError
from retrysafe._keys import KeyPolicy, parse_key
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.http.conftest import CALLER, Service

PRINTABLE = bytes(range(0x20, 0x7F))

header_value = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=40).map(lambda b: b'"' + b + b'"'),
    st.text(alphabet=PRINTABLE.decode(), max_size=300).map(str.encode),
    st.from_regex(rb'\A"([\x20-\x21\x23-\x5b\x5d-\x7e]|\\["\\])*"(;[a-z]+=[0-9]+)?\Z'),
)
header_lines = st.lists(header_value, min_size=1, max_size=3)
policies = st.sampled_from([KeyPolicy(), KeyPolicy(strict=True), KeyPolicy(max_length=20)])


def _accepted(values: list[bytes], policy: KeyPolicy) -> bool:
    try:
        parse_key(values, policy)
    except InvalidKeyError:
        return False
    return True


class KeyEcho:
    """A raw ASGI and WSGI app that records the key header lines it was given."""

    def __init__(self) -> None:
        self.seen: list[list[bytes]] = []

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        """Record the key lines and answer 200."""
        await receive()
        self.seen.append([v for k, v in scope["headers"] if k == b"idempotency-key"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})

    def wsgi(self, environ: Any, start_response: Any) -> list[bytes]:
        """Record the key line and answer 200."""
        self.seen.append([environ["HTTP_IDEMPOTENCY_KEY"].encode("latin-1")])
        start_response("200 OK", [])
        return [b"app"]


async def _call_asgi(app: Any, values: list[bytes]) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"authorization", CALLER.encode()),
            *((b"idempotency-key", v) for v in values),
        ],
    }
    received = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            await anyio.sleep_forever()
        received = True
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], dict(sent[0]["headers"]), body


@settings(max_examples=300, deadline=None)
@given(values=header_lines, policy=policies)
def test_b3_asgi_any_header_bytes_never_crash_or_reach_the_app_malformed(
    values: list[bytes], policy: KeyPolicy
) -> None:
    """Any key header lines get the app's answer iff parse_key accepts them, else the 400."""
    echo = KeyEcho()
    middleware = AsgiMiddleware(echo.asgi, store=AsyncMemoryStore(), key_policy=policy)
    status, headers, body = anyio.run(_call_asgi, middleware, values)
    if _accepted(values, policy):
        assert (status, body) == (200, b"app")
        assert echo.seen == [values]
    else:
        assert status == 400
        assert headers[b"content-type"] == b"application/problem+json"
        assert json.loads(body)["type"].endswith("#invalid-key")
        assert echo.seen == []


@settings(max_examples=300, deadline=None)
@given(value=header_value, policy=policies)
def test_b3_wsgi_any_header_bytes_never_crash_or_reach_the_app_malformed(
    value: bytes, policy: KeyPolicy
) -> None:
    """Any key header value gets the app's answer iff parse_key accepts it, else the 400."""
    echo = KeyEcho()
    middleware = WsgiMiddleware(echo.wsgi, store=MemoryStore(), key_policy=policy)
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/echo",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": "2",
        "HTTP_IDEMPOTENCY_KEY": value.decode("latin-1"),
        "HTTP_AUTHORIZATION": CALLER,
        "wsgi.input": __import__("io").BytesIO(b"{}"),
    }
    started: list[str] = []
    body = b"".join(
        middleware(environ, lambda status, headers, exc_info=None: started.append(status))
    )
    if _accepted([value], policy):
        assert (started, body) == (["200 OK"], b"app")
        assert echo.seen == [[value]]
    else:
        assert started == ["400 Bad Request"]
        assert json.loads(body)["type"].endswith("#invalid-key")
        assert echo.seen == []


# One header line that an HTTP/1.1 server can carry: no CR, LF or NUL.
wire_value = st.binary(max_size=120).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)


def _raw_post(url: str, value: bytes) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    request = (
        b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Authorization: " + CALLER.encode() + b"\r\n"
        b"Idempotency-Key: " + value + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("face", ["starlette", "flask"])
def test_b3_real_servers_never_pass_a_malformed_key_to_the_app(
    face: str, start_service: Callable[..., Service]
) -> None:
    """Over raw sockets to uvicorn and waitress: no 5xx, and the app sees only valid keys."""
    service = start_service(face)

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(value=wire_value)
    def check(value: bytes) -> None:
        status, body = _raw_post(service.url, value)
        assert status < 500
        if status == 200:  # the app ran (or its outcome was replayed): the key was valid
            seen = json.loads(body)["key"]
            assert _accepted([seen.encode("latin-1")], KeyPolicy())
        else:  # refused by the server itself, or by the middleware
            assert status == 400

    check()
