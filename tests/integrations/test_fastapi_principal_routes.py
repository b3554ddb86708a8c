"""FastAPI's `install(principal=...)` resolves the dependency for the route the request goes to
(B8, B35): its path parameters included, and a dependency that cannot be resolved fails closed.

Multi-tenant apps name the user from the path (`/tenants/{tenant}/...`) and the token; the
dependency must see the path parameter as the route does, or the user is dropped and the
request falls back to its credential (a refreshed token runs the effect again) or to the shared
anonymous scope (one user's response replays to another). On uvicorn, on the memory store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Body, Cookie, Depends, FastAPI, Header, HTTPException, Request
from fastapi.security import OAuth2PasswordBearer

from retrysafe import open_async_store
from retrysafe.integrations import _fastapi_principal
from retrysafe.integrations._fastapi_principal import DependencyPrincipal
from retrysafe.integrations.fastapi import idempotency, install
from tests.http.conftest import is_problem
from tests.integrations.servers import AsgiServer

SECRET = "s" * 32
OAUTH2 = OAuth2PasswordBearer(tokenUrl="token")
TOKENS = {
    ("acme", "t1"): "alice",
    ("acme", "t2"): "alice",
    ("acme", "t3"): "bob",
    ("beta", "t4"): "carol",
}
"""(tenant, bearer token) to user: t2 is alice's token after a refresh."""
SESSIONS = {("acme", "sess-alice"): "alice", ("acme", "sess-bob"): "bob"}
"""(tenant, session cookie) to user."""


def tenant_user(tenant: str, token: Annotated[str, Depends(OAUTH2)]) -> str:
    """The user of `token` in the path's `tenant`, else 401."""
    user = TOKENS.get((tenant, token))
    if user is None:
        raise HTTPException(401)
    return f"{tenant}/{user}"


def session_user(tenant: str, session: Annotated[str | None, Cookie()] = None) -> str:
    """The user of the session cookie in the path's `tenant`, else 401."""
    user = SESSIONS.get((tenant, session))
    if user is None:
        raise HTTPException(401)
    return user


def _served(app: FastAPI) -> Iterator[httpx.Client]:
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield client
    finally:
        server.stop()


def _serve_keyed(
    principal: Callable[..., str], routes: dict[str, Callable[..., Any]], **options: Any
) -> Iterator[httpx.Client]:
    """Serve an app whose `routes` (path to handler) are POST routes that require a key and
    answer 201, installed on the memory store with `principal` and `options`."""
    app = FastAPI()
    keyed = [Depends(idempotency(required=True))]
    for path, handler in routes.items():
        app.post(path, status_code=201, dependencies=keyed)(handler)
    store = open_async_store("memory://")
    install(app, store=store, principal=principal, scope_secret=SECRET, **options)
    return _served(app)


@pytest.fixture
def tenants() -> Iterator[tuple[httpx.Client, list[str]]]:
    """Payments per tenant, the user named from the path's tenant and the bearer token; the
    same route also reached through a router included with a `{tenant}` prefix."""
    runs: list[str] = []
    app = FastAPI()

    async def pay(user: Annotated[str, Depends(tenant_user)]) -> dict[str, Any]:
        runs.append(user)
        return {"paid_by": user, "run": len(runs)}

    keyed = [Depends(idempotency(required=True))]
    app.post("/tenants/{tenant}/payments", status_code=201, dependencies=keyed)(pay)
    router = APIRouter(prefix="/v2/tenants/{tenant}")
    router.post("/payments", status_code=201, dependencies=keyed)(pay)
    app.include_router(router)
    install(app, store=open_async_store("memory://"), principal=tenant_user, scope_secret=SECRET)
    for client in _served(app):
        yield client, runs


@pytest.mark.parametrize("path", ["/tenants/acme/payments", "/v2/tenants/acme/payments"])
def test_b8_a_principal_dependency_reads_the_routes_path_parameters(
    tenants: tuple[httpx.Client, list[str]], path: str
) -> None:
    """The dependency reads `tenant` from the path: alice's retry with her refreshed token
    replays (one run), and bob's request with her key runs for bob."""
    client, runs = tenants
    key = '"pay-1"'
    first = client.post(path, headers={"Authorization": "Bearer t1", "Idempotency-Key": key})
    retry = client.post(path, headers={"Authorization": "Bearer t2", "Idempotency-Key": key})
    bob = client.post(path, headers={"Authorization": "Bearer t3", "Idempotency-Key": key})
    assert first.status_code == retry.status_code == bob.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.json() == first.json() == {"paid_by": "acme/alice", "run": 1}
    assert bob.headers.get("idempotent-replayed") is None
    assert bob.json() == {"paid_by": "acme/bob", "run": 2}
    assert runs == ["acme/alice", "acme/bob"]


def test_b8_b35_a_shared_anonymous_scope_never_gets_a_users_response() -> None:
    """With `anonymous="shared"` and cookie sessions, alice's and bob's orders with one key
    are two callers: bob is never answered with alice's order (nor her address)."""
    runs: list[str] = []

    async def order(user: Annotated[str, Depends(session_user)]) -> dict[str, str]:
        runs.append(user)
        return {"order_for": user, "address": f"home address of {user}"}

    orders = {"/tenants/{tenant}/orders": order}
    for client in _serve_keyed(session_user, orders, anonymous="shared"):
        answers = [
            client.post(
                "/tenants/acme/orders",
                headers={"Idempotency-Key": '"order-42"', "Cookie": f"session={session}"},
            )
            for session in ("sess-alice", "sess-bob", "sess-alice")
        ]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert answers[1].json()["order_for"] == "bob"
    assert answers[1].headers.get("idempotent-replayed") is None
    assert answers[2].headers.get("idempotent-replayed") == "true"
    assert runs == ["alice", "bob"]


def body_user(token: Annotated[str, Body(embed=True)]) -> str:
    """A principal that reads the body, which the middleware does not give it."""
    return f"user-of-{token}"


def test_b8_a_principal_that_cannot_be_resolved_fails_closed() -> None:
    """A route that depends on the principal, whose dependency cannot be resolved before the
    claim (it reads the body), is refused with the 500 `scope-unresolved` problem: nothing
    runs and nothing is stored, never a silent fall back to the shared anonymous scope. A
    route that does not depend on it (a signup) is anonymous, as it is to the app."""
    runs: list[str] = []

    async def pay(user: Annotated[str, Depends(body_user)]) -> dict[str, str]:
        runs.append(user)
        return {"paid_by": user}

    async def signup(request: Request) -> dict[str, str]:
        runs.append("signup")
        return {"signed_up": (await request.json())["token"]}

    routes: dict[str, Callable[..., Any]] = {"/payments": pay, "/signup": signup}
    for client in _serve_keyed(body_user, routes, anonymous="shared"):
        key = {"Idempotency-Key": '"p-1"'}
        refused = client.post("/payments", headers=key, json={"token": "a"})
        other = client.post("/payments", headers=key, json={"token": "b"})
        signed = client.post("/signup", headers={"Idempotency-Key": '"s-1"'}, json={"token": "c"})
    assert is_problem(refused, 500, "scope-unresolved"), refused.text
    assert "body_user" in refused.json()["detail"]
    assert is_problem(other, 500, "scope-unresolved")  # nothing was stored under the key
    assert signed.status_code == 201
    assert runs == ["signup"]


def flaky_user(request: Request) -> str:
    """A principal whose user service fails (not a refusal the app answers)."""
    raise RuntimeError("the user service timed out")


def test_b8_a_principal_that_fails_fails_closed_with_a_problem() -> None:
    """A principal dependency that raises an exception the app does not answer, on a route
    that depends on it, is the 500 `scope-unresolved` problem (logged), not a fall back to
    the credential or anonymous scope: nothing runs."""
    runs: list[str] = []

    async def pay(user: Annotated[str, Depends(flaky_user)]) -> dict[str, str]:
        runs.append(user)
        return {"paid_by": user}

    for client in _serve_keyed(flaky_user, {"/payments": pay}, anonymous="shared"):
        refused = client.post("/payments", headers={"Idempotency-Key": '"p-1"'})
    assert is_problem(refused, 500, "scope-unresolved"), refused.text
    assert runs == []


def test_b8_one_route_at_two_paths_names_each_requests_own_user(
    tenants: tuple[httpx.Client, list[str]],
) -> None:
    """The route a request goes to is found once per path and remembered; two paths of one
    route (two tenants) are each resolved with their own path parameters: alice's and
    carol's payments with one key run for each, and each one's retry replays her own."""
    client, runs = tenants
    key = '"pay-2"'
    answers = [
        client.post(f"/tenants/{tenant}/payments", headers={**auth, "Idempotency-Key": key})
        for tenant, auth in [
            ("acme", {"Authorization": "Bearer t1"}),
            ("beta", {"Authorization": "Bearer t4"}),
            ("acme", {"Authorization": "Bearer t2"}),
            ("beta", {"Authorization": "Bearer t4"}),
        ]
    ]
    assert [a.status_code for a in answers] == [201] * 4
    assert [a.json()["paid_by"] for a in answers] == ["acme/alice", "beta/carol"] * 2
    assert [a.headers.get("idempotent-replayed") for a in answers] == [None, None, "true", "true"]
    assert runs == ["acme/alice", "beta/carol"]


def test_b8_the_app_routes_are_walked_once_per_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolving the principal walks the app's routes once per (method, host, root path,
    path), not on every keyed request, and what it remembers for one path is never another
    path's: two tenants of one route, each resolved twice, name their own users."""
    walks: list[int] = []
    walk = _fastapi_principal.route_candidates

    def counted(routes: Sequence[Any]) -> Sequence[Any]:
        walks.append(1)
        return walk(routes)

    monkeypatch.setattr(_fastapi_principal, "route_candidates", counted)
    app = FastAPI()
    router = APIRouter(prefix="/v2/tenants/{tenant}")
    router.post("/payments")(_paid)
    app.include_router(router)
    principal = DependencyPrincipal(app, tenant_user)

    def scope(tenant: str, token: str) -> dict[str, Any]:
        headers = [(b"host", b"api"), (b"authorization", f"Bearer {token}".encode())]
        path = f"/v2/tenants/{tenant}/payments"
        return {
            "type": "http",
            "method": "POST",
            "path": path,
            "root_path": "",
            "query_string": b"",
            "headers": headers,
            "app": app,
        }

    async def resolve() -> list[object]:
        sent = [("acme", "t1"), ("beta", "t4"), ("acme", "t2"), ("beta", "t4")]
        return [await principal(scope(tenant, token)) for tenant, token in sent]

    assert asyncio.run(resolve()) == ["acme/alice", "beta/carol", "acme/alice", "beta/carol"]
    assert len(walks) == 2


async def _paid(user: Annotated[str, Depends(tenant_user)]) -> dict[str, str]:
    return {"paid_by": user}


def api_key_user(
    x_api_key: Annotated[str, Header()], x_tenant: Annotated[int, Header()] = 0
) -> str:
    """A principal read from the client's headers: a required key and an int tenant."""
    return f"{x_tenant}/{x_api_key}"


def test_b8_a_clients_missing_or_malformed_header_is_scope_missing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A principal dependency that the request's own head does not resolve (a required
    header missing, an int header that is not one) is the client's input, not a fault of the
    server: the 400 `scope-missing` problem saying which, logged at DEBUG only (a client
    cannot flood the error log); nothing runs and nothing is stored, so the well-formed
    request with that key then runs. (One that reads the body is still the 500
    `scope-unresolved`: test_b8_a_principal_that_cannot_be_resolved_fails_closed.)"""
    runs: list[str] = []

    async def order(user: Annotated[str, Depends(api_key_user)]) -> dict[str, str]:
        runs.append(user)
        return {"order_for": user}

    served = _serve_keyed(api_key_user, {"/orders": order}, scope_header="X-API-Key")
    key = {"Idempotency-Key": '"o-1"'}
    with caplog.at_level(logging.DEBUG, logger="retrysafe"):
        for client in served:
            missing = client.post("/orders", headers=key)
            malformed = client.post("/orders", headers={**key, "X-API-Key": "k1", "X-Tenant": "x"})
            sound = client.post("/orders", headers={**key, "X-API-Key": "k1", "X-Tenant": "7"})
    assert is_problem(missing, 400, "scope-missing"), missing.text
    assert "x-api-key" in missing.json()["detail"]
    assert is_problem(malformed, 400, "scope-missing"), malformed.text
    assert "x-tenant" in malformed.json()["detail"]
    assert sound.status_code == 201
    assert sound.headers.get("idempotent-replayed") is None
    assert runs == ["7/k1"]
    ours = [r for r in caplog.records if r.name.startswith("retrysafe")]
    assert [r for r in ours if r.levelno > logging.DEBUG] == []
    assert any("x-tenant" in r.getMessage() for r in ours)
