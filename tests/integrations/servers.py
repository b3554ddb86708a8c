"""Real servers on free loopback ports, in threads: uvicorn for ASGI apps, wsgiref for WSGI."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from tests.servers import AsgiServer, wait_for_port

__all__ = ["AsgiServer", "WsgiServer", "wait_for_port"]


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
