"""A TCP relay in front of a real store server, with a switch that cuts it (a store gap).

Threads forward bytes between a loopback listening socket and the real Redis or PostgreSQL.
`cut()` closes every relayed connection and answers new ones with a reset until `restore()`:
to the store's client, the server is gone, and then back. `stall()` keeps the connections open
but forwards nothing until `resume()`: a server or network that stops answering mid-exchange.
`drop_replies()` forwards what the client sends but drops what the server answers, until
`keep_replies()`: a statement the server applied whose reply is lost.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Relay"]

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "mysql": 3306}


def _close(sock: socket.socket, *, reset: bool = False) -> None:
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        else:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
    sock.close()


class Relay:
    """Forward a loopback port to `host:port` until cut.

    Args:
        host: the real server's host.
        port: the real server's port.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._cut = False
        self._flowing = threading.Event()
        self._flowing.set()
        self._replying = threading.Event()
        self._replying.set()
        self.refused = 0
        """Connections answered with a reset while cut."""
        threading.Thread(target=self._accept, daemon=True, name="relay-accept").start()

    @classmethod
    def before(cls, url: str) -> Relay:
        """Return a relay to the server of a store URL (`url` gives the store's URL through it)."""
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or _PORTS.get(parts.scheme, 0))

    def url(self, url: str, query: str = "") -> str:
        """Return the store URL `url` through this relay, its login kept, `query` (`a=1&b=2`)
        added to its own."""
        parts = urlsplit(url)
        login = parts.netloc.rpartition("@")[0]
        netloc = f"{login}@127.0.0.1:{self.port}" if login else f"127.0.0.1:{self.port}"
        joined = "&".join(part for part in (parts.query, query) if part)
        return urlunsplit(parts._replace(netloc=netloc, query=joined))

    @property
    def is_cut(self) -> bool:
        """Whether the relay is cut."""
        return self._cut

    def cut(self) -> None:
        """Close every relayed connection, and reset new ones until `restore`."""
        with self._lock:
            self._cut = True
            pairs, self._pairs = list(self._pairs), set()
        for client, upstream in pairs:
            _close(client)
            _close(upstream)

    def stall(self) -> None:
        """Forward nothing more, either way, until `resume`; the connections stay open."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again what was held, and what follows."""
        self._flowing.set()

    def drop_replies(self) -> None:
        """Forward requests, but drop every reply, until `keep_replies`."""
        self._replying.clear()

    def keep_replies(self) -> None:
        """Forward replies again."""
        self._replying.set()

    def restore(self) -> None:
        """Relay new connections again."""
        with self._lock:
            self._cut = False

    def close(self) -> None:
        """Stop listening and close everything."""
        self.resume()
        self.cut()
        _close(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._cut:
                self.refused += 1
                _close(client, reset=True)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            upstream.settimeout(None)
            pair = (client, upstream)
            with self._lock:
                if self._cut:
                    _close(client, reset=True)
                    _close(upstream)
                    continue
                self._pairs.add(pair)
            for source, sink in (pair, pair[::-1]):
                threading.Thread(
                    target=self._pump, args=(source, sink, pair), daemon=True, name="relay-pump"
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        replies = source is pair[1]  # the server's side of the pair
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                if replies and not self._replying.is_set():
                    continue  # lost on the way back
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            if pair not in self._pairs:
                return  # cut: already closed
            self._pairs.discard(pair)
        for sock in pair:
            _close(sock)
