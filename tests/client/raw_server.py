"""A raw HTTP/1.1 server on a loopback port, in threads, for tests that script its bytes.

`ScriptedServer` listens, accepts on a thread and serves each connection on one of its own;
a subclass says what `serve` does with a connection. `read_request` reads one request off a
socket whose reads time out, until the server stops.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Request", "ScriptedServer", "read_request", "started"]


S = TypeVar("S", bound="ScriptedServer")


@dataclass(frozen=True)
class Request:
    """One request as the server read it: its target and headers (lower-case names)."""

    target: str
    headers: dict[str, str]


@dataclass
class ScriptedServer:
    """Listens on a loopback port; each accepted connection goes to `serve` on a thread."""

    url: str = field(default="", init=False)
    stopping: threading.Event = field(default_factory=threading.Event, init=False)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _listener: socket.socket = field(default_factory=socket.socket, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    def start(self) -> None:
        """Listen, and accept connections on a thread."""
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept)

    def stop(self) -> None:
        """Stop serving and accepting, and wait for every thread (each ends within 10 s)."""
        self.stopping.set()
        for thread in list(self._threads):
            thread.join(10)
        self._listener.close()

    def serve(self, conn: socket.socket) -> None:
        """Serve one connection (a subclass says how)."""
        raise NotImplementedError

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            self._spawn(self.serve, conn)


def read_request(
    conn: socket.socket, buffer: bytes, stopping: threading.Event
) -> tuple[Request, bytes]:
    """Read one request off `conn` (its reads time out); return it and the bytes after it."""
    while b"\r\n\r\n" not in buffer:
        buffer += _receive(conn, stopping)
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for text in lines:
        name, _, value = text.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(buffer) < length:
        buffer += _receive(conn, stopping)
    return Request(line.split(" ")[1], headers), buffer[length:]


def _receive(conn: socket.socket, stopping: threading.Event) -> bytes:
    while not stopping.is_set():
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        if not data:
            raise ConnectionResetError("the client hung up")
        return data
    raise ConnectionAbortedError("the server stops")


def started(make: Callable[[list[Any]], S]) -> Iterator[Callable[..., S]]:
    """A fixture's body: yield a function that starts `make(answers)` (a server of the given
    answers) and returns it; stop every server it started at the end."""
    servers: list[S] = []

    def start(*answers: Any) -> S:
        server = make(list(answers))
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
