"""B16, B18 on trio: an async operation's lease is renewed by a task beside it (a trio system
task), renewed still while its outcome is stored, and stopped from wherever the finishing runs
(`run_to_end`'s shielded scope), so the operation's outcome is stored and replayed. trio is a
development dependency: the rest of the tests run on asyncio."""

from __future__ import annotations

import httpx
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from retrysafe import Identity, open_async_store
from retrysafe._decorator import idempotent
from retrysafe.asgi import IdempotencyMiddleware

NAMESPACE = "tests.trio"


def test_b16_an_async_operation_on_trio_renews_its_lease_and_stores_its_outcome() -> None:
    """A call that runs past a third of its lease on trio has its lease renewed, its outcome
    stored, and a repeat replayed: the function ran once."""
    runs: list[float] = []

    async def main() -> None:
        store = open_async_store("memory://")
        identity = Identity(NAMESPACE, "", "k")

        @idempotent(store, key="key", namespace=NAMESPACE, lease=0.6, wait=0)
        async def charge(key: str) -> int:
            claimed = await store.get(identity)
            assert claimed is not None
            await trio.sleep(0.5)  # past the first renewal, due at 0.2 s
            renewed = await store.get(identity)
            assert renewed is not None
            runs.append(renewed.lease_expires_at - claimed.lease_expires_at)
            return len(runs)

        assert await charge("k") == 1
        assert await charge("k") == 1
        await store.aclose()

    trio.run(main)
    assert len(runs) == 1
    assert runs[0] > 0.1  # renewed


def test_b18_a_keyed_request_on_trio_is_stored_and_replayed() -> None:
    """The ASGI middleware on trio (as under `hypercorn --worker-class trio`): a keyed POST whose
    handler outlives a third of its lease answers, its outcome is stored, and its retry replays
    it: the handler ran once."""
    runs: list[int] = []

    async def charge(request: Request) -> JSONResponse:
        runs.append(len(runs) + 1)
        await trio.sleep(0.5)  # past the first renewal, due at 0.2 s
        return JSONResponse({"charge": len(runs)}, status_code=201)

    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    app.add_middleware(
        IdempotencyMiddleware, store=open_async_store("memory://"), lease=0.6, wait=0
    )

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {"Idempotency-Key": "k-trio", "Authorization": "Bearer t"}
            return [await client.post("/charges", headers=headers) for _ in range(2)]

    first, retry = trio.run(main)
    assert (first.status_code, first.json()) == (201, {"charge": 1})
    assert (retry.status_code, retry.headers.get("idempotent-replayed")) == (201, "true")
    assert retry.json() == {"charge": 1}
    assert runs == [1]
