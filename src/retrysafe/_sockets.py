"""The listening socket every server of the command line binds before it starts."""

from __future__ import annotations

import socket

__all__ = ["listen"]


def listen(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to (host, port) and listening (port 0 picks a free one), so
    that a port in use is one clear error before anything starts, and connections wait until
    the server accepts them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening one
    # says TCP; without it a response sent in two writes waits for Nagle (40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
