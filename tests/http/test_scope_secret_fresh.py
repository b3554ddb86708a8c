"""The scope secret of a store that other faces used first (B8, B26).

The decorator's records (and a consumer's, or a `scope_function`'s) name their scopes as given,
never hashed with the secret: a store they used before any keyed HTTP request still gets a
secret at the first one, where records scoped with a lost secret make it refuse (B8). The app
is served by uvicorn on a real SQLite store shared with the decorator.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import idempotent, open_async_store, open_store
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.asgi import IdempotencyMiddleware
from tests.servers import AsgiServer


async def pay(request: Request) -> JSONResponse:
    """A payment endpoint."""
    return JSONResponse({"paid": (await request.json())["amount"]}, status_code=201)


def test_b8_b26_a_store_the_decorator_used_first_gets_a_secret(tmp_path: Path) -> None:
    """Decorated calls first, then keyed requests: the first makes the secret, the retry
    replays (before: 503 store-unavailable, 'records exist', for every keyed request)."""
    url = f"sqlite:///{tmp_path / 'records.db'}"
    store = open_store(url)
    try:
        charge = idempotent(store, key="order", scope="tenant-a", namespace="charges")(
            lambda order: f"charged {order}"
        )
        assert charge("o-1") == "charged o-1"
        app = IdempotencyMiddleware(
            Starlette(routes=[Route("/payments", pay, methods=["POST"])]),
            store=open_async_store(url),
        )
        server = AsgiServer(app)
        try:
            headers = {"Idempotency-Key": "k-1", "Authorization": "Bearer alice"}
            with httpx.Client(base_url=server.url, timeout=20) as client:
                first = client.post("/payments", json={"amount": 5}, headers=headers)
                retry = client.post("/payments", json={"amount": 5}, headers=headers)
        finally:
            server.stop()
        assert first.status_code == retry.status_code == 201
        assert retry.headers["idempotent-replayed"] == "true"
        secret = store.get(SECRET_IDENTITY)
        assert secret is not None
        assert secret.outcome is not None
        assert len(secret.outcome) == 32
    finally:
        store.close()
