"""The FastAPI dependency ignores the header on methods the middleware does not cover (B5).

A router-level `Depends(idempotency())` runs on every route of the router, PUT and GET too;
the middleware tracks only POST and PATCH by default, so there the header is ignored: no
error, and no key for the handler. Each app is served by uvicorn on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI

from retrysafe.integrations.fastapi import idempotency, install
from retrysafe.stores.memory import AsyncMemoryStore
from tests.integrations.conftest import CALLER
from tests.integrations.servers import AsgiServer

MALFORMED = {"Idempotency-Key": '"unterminated', **CALLER}


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """A client of an app whose router declares the dependency for all its routes."""
    router = APIRouter(dependencies=[Depends(idempotency())])

    @router.put("/items/{item}")
    async def put_item(item: int, key: Annotated[str | None, Depends(idempotency())]) -> dict:
        return {"item": item, "key": key}

    @router.get("/items/{item}")
    async def get_item(item: int) -> dict[str, int]:
        return {"item": item}

    @router.post("/items")
    async def create_item() -> dict[str, int]:
        return {"item": 1}

    app = FastAPI()
    app.include_router(router)
    install(app, store=AsyncMemoryStore(), scope_secret="s" * 32)
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            yield http
    finally:
        server.stop()


@pytest.mark.parametrize("method", ["PUT", "GET"])
def test_b5_a_malformed_key_is_ignored_on_methods_not_covered(
    client: httpx.Client, method: str
) -> None:
    """PUT and GET with a malformed key run as if it were absent; a handler asking for the
    key gets None."""
    response = client.request(method, "/items/1", headers=MALFORMED)
    assert response.status_code == 200
    assert response.json()["item"] == 1
    if method == "PUT":
        assert response.json()["key"] is None
    assert "idempotent-replayed" not in response.headers


def test_b3_a_malformed_key_on_a_covered_method_gets_the_problem(client: httpx.Client) -> None:
    """On POST the middleware answers the malformed key with its 400 problem+json."""
    response = client.post("/items", headers=MALFORMED)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("#invalid-key")
