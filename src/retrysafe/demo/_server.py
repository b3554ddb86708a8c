"""Serving the demo API in the foreground with uvicorn, on a socket bound up front.

(`retrysafe demo` serves it in the background with `retrysafe.demo._relay.serve_asgi`.)"""

from __future__ import annotations

import socket

import uvicorn
from starlette.types import ASGIApp

__all__ = ["listen", "serve_app"]


def listen(host: str, port: int) -> socket.socket:
    """Return a TCP socket bound to (host, port) and listening; port 0 picks a free one.

    Binding here, before uvicorn starts, turns "address in use" into one clear error.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    sock.listen(128)  # connections queue from now on: a client may connect once this is printed
    return sock


async def serve_app(app: ASGIApp, sock: socket.socket, *, log_level: str = "info") -> None:
    """Serve `app` on `sock` until interrupted (Ctrl+C or SIGTERM), lifespan on."""
    config = uvicorn.Config(
        app, interface="asgi3", lifespan="on", log_level=log_level, timeout_graceful_shutdown=5
    )
    await uvicorn.Server(config).serve(sockets=[sock])
