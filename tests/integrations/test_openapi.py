"""The OpenAPI schema a real server serves for the routes an integration guards: the
`Idempotency-Key` header (B6), the replay header (B10) and the problem+json answers (B24)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from litestar import Litestar, Router, post
from litestar.params import FromPath, JSONBody

from retrysafe.asgi import IdempotencyMiddleware, RouteSettings
from retrysafe.integrations.fastapi import idempotency, install
from retrysafe.integrations.litestar import STATE_KEY, IdempotencyPlugin
from retrysafe.integrations.litestar import idempotency as litestar_idempotency
from retrysafe.integrations.litestar import install as litestar_install
from retrysafe.stores.memory import AsyncMemoryStore
from retrysafe.transactions.fastapi import RequestTransaction, Transactional, transaction
from retrysafe.transactions.fastapi import install as install_transactions
from tests.integrations.conftest import CALLER, new_key
from tests.integrations.servers import AsgiServer

PROBLEMS = ("400", "409", "410", "413", "422", "503")
"""The statuses of the problems every guarded route may answer with, by default."""
RETRIED = ("409", "503")
"""The problems that tell the client when to retry (`Retry-After`)."""
ABORTED = "https://retrysafe.readthedocs.io/en/latest/transactions/#transaction-aborted"
"""The `type` of the problem a transactional route answers when its handler's transaction was
aborted (B24)."""


@pytest.fixture
def serve() -> Iterator[Any]:
    """A factory: serve an ASGI app on uvicorn; stop every server afterwards."""
    servers: list[AsgiServer] = []

    def start(app: Any) -> AsgiServer:
        servers.append(AsgiServer(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def fetch(server: AsgiServer, path: str) -> dict[str, Any]:
    """GET the JSON document at `path` from `server`."""
    response = httpx.get(server.url + path, timeout=15)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def key_header(operation: dict[str, Any]) -> dict[str, Any] | None:
    """Return the operation's `Idempotency-Key` header parameter, if it has one."""
    found = [
        p
        for p in operation.get("parameters", [])
        if p["in"] == "header" and p["name"].lower() == "idempotency-key"
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Return `node`, or what its `$ref` points to in `schema`."""
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = schema
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    resolved: dict[str, Any] = target
    return resolved


def assert_guarded(schema: dict[str, Any], operation: dict[str, Any], *, required: bool) -> None:
    """The operation shows the key header, the replay header and the problem answers."""
    header = key_header(operation)
    assert header is not None
    assert header.get("required", False) is required
    assert "retrying" in header["description"]
    responses = operation["responses"]
    success = [response for status, response in responses.items() if status.startswith("2")]
    assert success
    for response in success:
        assert response["headers"]["Idempotent-Replayed"]["schema"]["enum"] == ["true"]
    for status in PROBLEMS:
        media = responses[status]["content"]["application/problem+json"]
        problem = resolve(schema, media["schema"])
        assert set(problem["required"]) == {"type", "title", "status", "detail"}
        assert "#" in responses[status]["description"]  # links to the published policy (B25)
    for status in RETRIED:
        assert "Retry-After" in responses[status]["headers"]
    assert "Idempotent-Replayed" in responses["410"]["headers"]


def assert_unguarded(operation: dict[str, Any]) -> None:
    """The operation shows nothing of idempotency."""
    assert key_header(operation) is None
    assert not {"409", "410", "413", "503"} & set(operation["responses"])


def fastapi_app(database: Path) -> tuple[Any, Any, Any]:
    """A FastAPI app with HTTP-middleware routes and transactional routes; both handles."""
    app = FastAPI()

    @app.post("/required", status_code=201, dependencies=[Depends(idempotency(required=True))])
    async def required() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/marked")
    async def marked(key: Annotated[str | None, Depends(idempotency())]) -> dict[str, Any]:
        return {"key": key}

    @app.post("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/exempt", dependencies=[Depends(idempotency(exempt=True))])
    async def exempt() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    @app.post("/payments", status_code=201)
    async def pay(tx: Transactional) -> dict[str, str | None]:
        return {"key": tx.key}

    @app.post("/refunds")
    async def refund(
        tx: Annotated[RequestTransaction[Any], Depends(transaction(required=True))],
    ) -> dict[str, bool]:
        return {"ok": True}

    router = APIRouter(dependencies=[Depends(idempotency(required=True))])

    @router.post("/required")
    async def v1_required() -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router, prefix="/v1")
    http = install(
        app, store=AsyncMemoryStore(), routes={"/orders/*": RouteSettings(required=True)}
    )
    transactional = install_transactions(
        app, connect=lambda: sqlite3.connect(database, timeout=30, check_same_thread=False)
    )
    return app, http, transactional


def test_b6_b10_b24_fastapi_openapi_shows_what_guards_each_route(
    serve: Any, tmp_path: Path
) -> None:
    """/openapi.json shows the key header (required where the route requires it), the replay
    header and the problem answers on dependency, pattern and transactional routes; unmarked
    and exempt routes show nothing."""
    app, _, _ = fastapi_app(tmp_path / "app.db")
    schema = fetch(serve(app), "/openapi.json")
    paths = schema["paths"]
    for path, required in [
        ("/required", True),
        ("/marked", False),
        ("/v1/required", True),
        ("/orders/{order_id}", True),
        ("/payments", False),
        ("/refunds", True),
    ]:
        assert_guarded(schema, paths[path]["post"], required=required)
    assert_unguarded(paths["/plain"]["post"])
    assert_unguarded(paths["/exempt"]["post"])
    validation = paths["/marked"]["post"]["responses"]["422"]["content"]
    assert set(validation) == {"application/json", "application/problem+json"}  # FastAPI's too
    assert schema["components"]["schemas"]["ProblemDetails"]["type"] == "object"


def test_b24_fastapi_openapi_shows_an_aborted_transaction_on_transactional_routes_only(
    serve: Any, tmp_path: Path
) -> None:
    """A transactional route also lists the 500 transaction-aborted problem, linked to the
    `type` it is served with; a route of the HTTP middleware does not."""
    app, _, _ = fastapi_app(tmp_path / "app.db")
    paths = fetch(serve(app), "/openapi.json")["paths"]
    for path in ("/payments", "/refunds"):
        aborted = paths[path]["post"]["responses"]["500"]
        assert f"Transaction aborted ([transaction-aborted]({ABORTED}))." in aborted["description"]
        assert "application/problem+json" in aborted["content"]
        assert "Retry-After" not in aborted.get("headers", {})
    for path in ("/required", "/marked", "/v1/required", "/orders/{order_id}"):
        assert "500" not in paths[path]["post"]["responses"]


def test_b10_fastapi_installs_hand_back_their_middleware(serve: Any, tmp_path: Path) -> None:
    """Both `install`s return their middleware: its settings, and counters that count what
    the served app did, a replay included."""
    app, http, transactional = fastapi_app(tmp_path / "app.db")
    assert http.settings.required is False
    assert transactional.settings.replay_header == "Idempotent-Replayed"
    server = serve(app)
    with httpx.Client(base_url=server.url, headers=CALLER, timeout=15) as client:
        for path, handle in [("/marked", http), ("/payments", transactional)]:
            key = {"Idempotency-Key": f'"{new_key()}"'}
            first, second = client.post(path, headers=key), client.post(path, headers=key)
            assert second.headers["idempotent-replayed"] == "true"
            assert second.content == first.content
            assert (handle.counters.executions, handle.counters.replays) == (1, 1)
            assert handle.observation.observers == ()


def litestar_app(how: str) -> Any:
    """A Litestar app guarded by the plugin or by `install`, marked in handlers' `opt`."""

    @post("/required", opt=litestar_idempotency(required=True))
    async def required() -> dict[str, bool]:
        return {"ok": True}

    @post("/marked", opt=litestar_idempotency())
    async def marked(data: JSONBody[dict[str, int]]) -> dict[str, int]:
        return data

    @post("/plain")
    async def plain() -> dict[str, bool]:
        return {"ok": True}

    @post("/exempt", opt=litestar_idempotency(exempt=True))
    async def exempt() -> dict[str, bool]:
        return {"ok": True}

    @post("/orders/{order_id:int}")
    async def order(order_id: FromPath[int]) -> dict[str, int]:
        return {"order": order_id}

    @post("/required")
    async def v1_required() -> dict[str, bool]:
        return {"ok": True}

    v1 = Router("/v1", route_handlers=[v1_required], opt=litestar_idempotency(required=True))
    handlers = [required, marked, plain, exempt, order, v1]
    options: dict[str, Any] = {
        "store": AsyncMemoryStore(),
        "routes": {"/orders/*": RouteSettings(required=True)},
    }
    if how == "plugin":
        return Litestar(handlers, plugins=[IdempotencyPlugin(**options)])
    return litestar_install(Litestar(handlers), **options)


@pytest.mark.parametrize("how", ["plugin", "install"])
def test_b6_b10_b24_litestar_openapi_shows_what_guards_each_route(serve: Any, how: str) -> None:
    """/schema/openapi.json shows the key header (required where the handler, its router or
    a pattern requires it), the replay header and the problem answers; unmarked and exempt
    handlers show nothing."""
    schema = fetch(serve(litestar_app(how)), "/schema/openapi.json")
    paths = schema["paths"]
    for path, required in [
        ("/required", True),
        ("/marked", False),
        ("/v1/required", True),
        ("/orders/{order_id}", True),
    ]:
        assert_guarded(schema, paths[path]["post"], required=required)
    assert_unguarded(paths["/plain"]["post"])
    assert_unguarded(paths["/exempt"]["post"])
    assert len(schema["paths"]["/required"]["post"]["parameters"]) == 1  # described once


def test_b10_litestar_install_returns_the_app_and_keeps_the_middleware_in_its_state(
    serve: Any,
) -> None:
    """`install` returns the Litestar app itself, served as it is; `app.state[STATE_KEY]` is
    the middleware, whose counters count the replay."""
    app = litestar_app("install")
    assert isinstance(app, Litestar)
    middleware = app.state[STATE_KEY]
    assert isinstance(middleware, IdempotencyMiddleware)
    server = serve(app)
    key = {"Idempotency-Key": new_key(), **CALLER}
    first = httpx.post(f"{server.url}/marked", headers=key, json={"n": 1}, timeout=15)
    second = httpx.post(f"{server.url}/marked", headers=key, json={"n": 1}, timeout=15)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert (middleware.counters.executions, middleware.counters.replays) == (1, 1)
