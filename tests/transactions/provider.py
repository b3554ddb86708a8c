"""A test payment provider: a real HTTP server that deduplicates charges by idempotency key.

`POST /charges` with an `Idempotency-Key` header creates a charge the first time a key is seen
(201) and returns the same charge for the key afterwards (200), as Stripe does. It counts every
call and every charge created, by key, for the test to check. Served by uvicorn on a loopback
port from a thread of the test process.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import AsgiServer

__all__ = ["PaymentProvider"]


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
