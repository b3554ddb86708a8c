"""A Starlette app behind the ASGI middleware, run as a process of its own by the scope tests.

    python -m tests.http.scope_server PORT_FILE STORE_URL

`POST /payments` answers 201 with this process's id and how many payments it made, so a test
can tell which process ran a request and whether another process's answer was replayed. No
`scope_secret` is configured: the processes share the secret kept in the store (B8).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import open_async_store
from retrysafe.asgi import IdempotencyMiddleware
from tests.servers import announced_listener


def build(store_url: str) -> IdempotencyMiddleware:
    """Return the app behind the middleware on the store at `store_url`."""
    store = open_async_store(store_url)
    payments = itertools.count(1)

    async def pay(request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"pid": os.getpid(), "n": next(payments), "body": body}, 201)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await store.aclose()

    app = Starlette(routes=[Route("/payments", pay, methods=["POST"])], lifespan=lifespan)
    return IdempotencyMiddleware(app, store=store)


def main() -> None:
    """Serve with the store URL argv[2] on a loopback port of its own, written to the file
    argv[1], until terminated."""
    port_file, store_url = Path(sys.argv[1]), sys.argv[2]
    app = build(store_url)
    listener = announced_listener(port_file)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])


if __name__ == "__main__":
    main()
