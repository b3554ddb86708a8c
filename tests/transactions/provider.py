"""A test payment provider: a real HTTP server that deduplicates charges by idempotency key.

`POST /charges` with an `Idempotency-Key` header creates a charge the first time a key is seen
(201) and returns the same charge for the key afterwards (200), as Stripe does. It counts every
call and every charge created, by key, for the test to check. Served by uvicorn on a loopback
port from a thread of the test process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

__all__ = ["AsgiServer", "PaymentProvider"]

_START_SECONDS = 10.0


class AsgiServer:
    """uvicorn serving an ASGI app on a loopback port, from a thread of the test process."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="off", log_level="error", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="uvicorn")

    def start(self) -> Self:
        """Serve from a thread; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))


class PaymentProvider(AsgiServer):
    """The provider's state and its ASGI app, served by uvicorn."""

    def __init__(self) -> None:
        self.charges: dict[str, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__(Starlette(routes=[Route("/charges", self._charge, methods=["POST"])]))

    @property
    def created(self) -> int:
        """How many charges were created."""
        with self._lock:
            return len(self.charges)

    async def _charge(self, request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        if not key:
            return JSONResponse({"error": "Idempotency-Key is required"}, status_code=400)
        body = await request.json()
        with self._lock:
            self.calls[key] += 1
            charge = self.charges.get(key)
            if charge is not None:
                return JSONResponse(charge, status_code=200)
            charge = {"id": f"ch_{len(self.charges) + 1}", "amount": body["amount"]}
            self.charges[key] = charge
        return JSONResponse(charge, status_code=201)
