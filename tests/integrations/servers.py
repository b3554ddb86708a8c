"""Real servers on free loopback ports, in threads: uvicorn for ASGI apps, wsgiref for WSGI."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn

_START_SECONDS = 10.0

__all__ = ["AsgiServer", "WsgiServer", "free_port", "wait_for_port"]


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, seconds: float = 15.0, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until something accepts connections on loopback `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


class AsgiServer:
    """uvicorn serving an ASGI app from a thread, on its own event loop."""

    def __init__(
        self,
        app: Any,
        *,
        lifespan: str = "off",
        on_close: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            log_level="critical",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._on_close = on_close
        self._thread = threading.Thread(target=self._run, daemon=True, name="uvicorn")
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)

    def _run(self) -> None:
        async def main() -> None:
            try:
                await self._server.serve(sockets=[self._sock])
            finally:
                if self._on_close is not None:
                    await self._on_close()

        asyncio.run(main())

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output clean."""


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class WsgiServer:
    """wsgiref serving a WSGI app from a thread, a thread per connection."""

    def __init__(self, app: Any) -> None:
        self._server = make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True, name="wsgiref"
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
