"""Raw sockets for the proxy's hostile-input tests: a client that sends any bytes, and servers
that count what reaches them or misbehave on purpose."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_TIMEOUT = 15.0
CALLER = b"Authorization: Bearer hostile-test\r\n"
"""The credential every request sends: the proxy scopes keys by it (B8)."""


@dataclass
class RawResponse:
    """A response read off a socket: status, lower-case headers, decoded body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, Any]:
        """Return the problem+json body; fail if the response is not one."""
        assert self.headers.get("content-type") == "application/problem+json", self
        problem: dict[str, Any] = json.loads(self.body)
        return problem


def _dechunk(data: bytes) -> bytes:
    body = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        body, data = body + data[:size], data[size + 2 :]
    return body


def request(target: str | bytes, *, method: bytes = b"POST", headers: bytes = b"",
            body: bytes = b"{}", key: bool = True) -> bytes:  # fmt: skip
    """Return the bytes of a request with `target`, a fresh key, a Host, a credential and a
    body."""
    raw_target = target.encode("latin-1") if isinstance(target, str) else target
    keyed = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode() if key else b""
    length = f"Content-Length: {len(body)}\r\n".encode() if body is not None else b""
    return (
        method + b" " + raw_target + b" HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n"
        + CALLER + keyed + length + headers + b"\r\n" + body
    )  # fmt: skip


def exchange(port: int, request: bytes) -> RawResponse | None:
    """Send `request` bytes to 127.0.0.1:port, read until the server closes or the response is
    complete; return it, or None when the server closed without answering."""
    with socket.create_connection(("127.0.0.1", port), _TIMEOUT) as sock:
        sock.settimeout(_TIMEOUT)
        with contextlib.suppress(OSError):
            sock.sendall(request)
        return read_response(sock)


def read_response(sock: socket.socket) -> RawResponse | None:
    """Read one response off `sock` (within its timeout): until it is complete or the server
    closes; return it, or None when the server closed without answering."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
        response = _parse(data, complete=False)
        if response is not None:
            return response
    return _parse(data, complete=True)


def _parse(data: bytes, *, complete: bool) -> RawResponse | None:
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) < length:
            return None if not complete else RawResponse(status, headers, rest)
        return RawResponse(status, headers, rest[:length])
    if headers.get("transfer-encoding") == "chunked":
        if not rest.endswith(b"0\r\n\r\n") and not complete:
            return None
        return RawResponse(status, headers, _dechunk(rest))
    return RawResponse(status, headers, rest) if complete else None


@dataclass
class RawServer:
    """A loopback TCP server that reads one request head per connection and answers with
    `behave(request_head, socket)`; counts the requests that reach it."""

    behave: Callable[[bytes, socket.socket], None]
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(_TIMEOUT)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
            except OSError:
                return
            if not head:
                return
            with self._lock:
                self.requests.append(head)
            with contextlib.suppress(OSError):
                self.behave(head, conn)

    def count(self) -> int:
        """Return how many requests reached this server."""
        with self._lock:
            return len(self.requests)

    def stop(self) -> None:
        """Stop listening."""
        self._listener.close()


def answer_ok(head: bytes, conn: socket.socket) -> None:
    """A well-behaved server: 200 with a short body."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\ninternal")


def misbehave(head: bytes, conn: socket.socket) -> None:
    """Answer by the request's path: /short, /reset, /garbage, /close, else 201."""
    path = head.split(b" ", 2)[1]
    if path.startswith(b"/short"):  # announces 100 bytes, sends 10, closes
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n0123456789")
    elif path.startswith(b"/reset"):  # TCP reset instead of an answer
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif path.startswith(b"/garbage"):
        conn.sendall(b"\x00\x01 not http at all\r\n\r\n")
    elif path.startswith(b"/close"):  # closes without a byte
        pass
    else:
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
