"""A timeout layer and the idempotency middleware (B18), as docs/http.md and docs/frameworks.md
order them: a Starlette `BaseHTTPMiddleware` that answers 504 when `call_next` takes longer
than its limit, while the handler (which it does not cancel) keeps running.

Outside the idempotency middleware (added after `install`), the 504 is the timeout layer's
alone: the middleware still holds the key, so a retry meanwhile gets `request-in-flight`, and
once the handler ends its response is stored and replayed; the effect runs once. Inside it
(added before `install`), the middleware sees a complete 504, a 5xx it releases the key for
(B18), so every retry runs the effect again. FastAPI on uvicorn, the memory store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from retrysafe.integrations.fastapi import install
from retrysafe.stores.memory import AsyncMemoryStore
from tests.integrations.servers import AsgiServer

HEADERS = {"Authorization": "Bearer alice", "Idempotency-Key": "k-1"}
LIMIT = 0.3
"""The timeout layer's limit, in seconds."""
WORK = 2.0
"""How long the handler works after making its effect: well past `LIMIT`."""


class Timeout(BaseHTTPMiddleware):
    """The common timeout layer: 504 once `call_next` takes longer than `LIMIT`."""

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        """Answer the app's response, or 504 when it is late."""
        try:
            return await asyncio.wait_for(call_next(request), LIMIT)
        except TimeoutError:
            return JSONResponse({"detail": "timeout"}, status_code=504)


@contextmanager
def served(*, timeout_outside: bool) -> Iterator[tuple[httpx.Client, list[int]]]:
    """The app with `Timeout` added after `install` (outside it) or before (inside it); yield
    a client and the list of the effects the handler made."""
    effects: list[int] = []
    app = FastAPI()

    @app.post("/payments", status_code=201)
    async def pay() -> dict[str, int]:
        effects.append(1)  # the effect first, then slow work
        await asyncio.sleep(WORK)
        return {"paid": len(effects)}

    if not timeout_outside:
        app.add_middleware(Timeout)
    install(app, store=AsyncMemoryStore(), scope_secret="s" * 32, required=True, wait=0)
    if timeout_outside:
        app.add_middleware(Timeout)
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client, effects
    finally:
        server.stop()


def test_b18_a_timeout_layer_outside_the_middleware_runs_the_effect_once() -> None:
    """The first try gets the timeout layer's 504; a retry while the handler still works gets
    409 `request-in-flight`, and one after it ended replays its 201; one effect."""
    with served(timeout_outside=True) as (client, effects):
        first = client.post("/payments", headers=HEADERS)
        at_once = client.post("/payments", headers=HEADERS)
        deadline = time.monotonic() + WORK + 10
        later = client.post("/payments", headers=HEADERS)
        while later.status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.1)
            later = client.post("/payments", headers=HEADERS)
        assert effects == [1]
    assert first.status_code == 504
    assert at_once.status_code == 409
    assert at_once.json()["type"].endswith("#request-in-flight")
    assert (later.status_code, later.headers.get("idempotent-replayed")) == (201, "true")
    assert later.json() == {"paid": 1}


def test_b18_a_timeout_layer_inside_the_middleware_runs_every_retry_again() -> None:
    """The middleware sees the timeout layer's complete 504 and releases the key (a 5xx), while
    the handler keeps working: every retry runs the effect again, and none is told to wait."""
    with served(timeout_outside=False) as (client, effects):
        answers = [client.post("/payments", headers=HEADERS).status_code for _ in range(3)]
        assert len(effects) == 3
    assert answers == [504, 504, 504]
