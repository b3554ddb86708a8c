"""FastAPI routes name their principal with the app's own dependency (B8): `install(principal=)`.

The app authenticates as FastAPI apps do, in a dependency (`current_user` behind
`OAuth2PasswordBearer`), which no middleware can see; with `principal=current_user`, a keyed
request's scope is the user it returns, resolved before the claim. Through FastAPI's own test
client, on the memory store.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from retrysafe import open_async_store
from retrysafe.integrations.fastapi import idempotency, install
from tests.integrations.servers import AsgiServer

TOKENS = {"t1": "alice", "t2": "alice", "t3": "bob"}
"""Bearer tokens and their users: t2 is alice's token after a refresh."""
SECRET = "s" * 32


@dataclass
class Sessions:
    """A database session dependency's openings and closings (a `yield` dependency)."""

    events: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)


@dataclass
class Payments:
    """The app under test and what its handler charged."""

    client: httpx.Client
    app: FastAPI
    sessions: Sessions
    charges: list[str] = field(default_factory=list)

    def pay(self, token: str, key: str = "k-1") -> Any:
        """POST a payment with `token` and `key`."""
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
        return self.client.post("/payments", headers=headers)


OAUTH2 = OAuth2PasswordBearer(tokenUrl="token")


def database(request: Request) -> Iterator[Sessions]:
    """A `yield` dependency: the app's 'database session', counted."""
    sessions: Sessions = request.app.state.sessions
    sessions.events.append("opened")
    try:
        yield sessions
    finally:
        sessions.events.append("closed")


def current_user(
    token: Annotated[str, Depends(OAUTH2)], db: Annotated[Sessions, Depends(database)]
) -> str:
    """The app's authentication: the user of a known bearer token, else 401."""
    if token not in TOKENS:
        raise HTTPException(401, "unknown token")
    db.users.append(TOKENS[token])
    return TOKENS[token]


async def pay(request: Request, user: Annotated[str, Depends(current_user)]) -> dict[str, Any]:
    """The payment route: charges `user`."""
    charges: list[str] = request.app.state.charges
    charges.append(user)
    return {"charge": len(charges), "user": user}


@pytest.fixture
def payments() -> Iterator[Payments]:
    """A FastAPI app whose users come from a bearer token, looked up in a 'database'."""
    app = FastAPI()
    app.state.sessions, app.state.charges = Sessions(), []
    app.post("/payments", status_code=201, dependencies=[Depends(idempotency(required=True))])(pay)
    install(app, store=open_async_store("memory://"), scope_secret=SECRET, principal=current_user)
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            yield Payments(client, app, app.state.sessions, app.state.charges)
    finally:
        server.stop()


def test_b8_a_refreshed_token_keeps_the_users_scope(payments: Payments) -> None:
    """Alice's retry with her refreshed token is a replay: one charge."""
    first = payments.pay("t1")
    retry = payments.pay("t2")
    assert first.status_code == retry.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.json() == first.json() == {"charge": 1, "user": "alice"}
    assert payments.charges == ["alice"]


def test_b8_b35_two_users_with_one_key_are_two_callers(payments: Payments) -> None:
    """Bob's request with alice's key runs for bob and is never answered with hers."""
    alice = payments.pay("t1")
    bob = payments.pay("t3")
    assert alice.json() == {"charge": 1, "user": "alice"}
    assert bob.json() == {"charge": 2, "user": "bob"}
    assert bob.headers.get("idempotent-replayed") is None


def test_b8_the_dependency_resolves_as_in_a_route(payments: Payments) -> None:
    """Its `yield` sub-dependency is closed before the claim (before the route opens its
    own), and the app's overrides apply to it."""
    payments.pay("t1")
    # The principal's session, then the route's (which FastAPI may close after the answer).
    assert payments.sessions.events[:3] == ["opened", "closed", "opened"]
    payments.app.dependency_overrides[current_user] = lambda: "bob"
    overridden = payments.pay("t1", key="k-2")
    assert overridden.json()["user"] == "bob"
    again = payments.pay("t2", key="k-2")  # bob again, whatever the token says
    assert again.headers.get("idempotent-replayed") == "true"


def test_b9_a_token_the_dependency_refuses_gets_the_routes_answer(payments: Payments) -> None:
    """An unknown token names no principal: the route's own 401 answers, nothing is charged,
    and the user's later request with a good token runs."""
    refused = payments.pay("nope")
    assert refused.status_code == 401
    assert payments.charges == []
    assert payments.pay("t1", key="k-2").status_code == 201


class AuthError(Exception):
    """An app's own authentication error, which its exception handler answers with 401."""


def strict_user(request: Request) -> str:
    """An authentication that refuses with the app's own exception, or Starlette's."""
    token = request.headers.get("authorization", "")
    if token == "Bearer starlette":
        raise StarletteHTTPException(401, "no such token")
    if token not in ("Bearer t1", "Bearer t2"):
        raise AuthError(token)
    return "alice"


@pytest.mark.parametrize("token", ["mine", "starlette"])
def test_b9_a_refusal_the_app_maps_is_the_apps_answer(token: str) -> None:
    """A principal dependency that raises the app's own exception (answered by its exception
    handler) or Starlette's `HTTPException` names no principal: the route's 401 answers, as
    without `principal=`, never a 500 from the middleware."""
    app = FastAPI()

    @app.exception_handler(AuthError)
    async def unauthorized(request: Request, error: AuthError) -> JSONResponse:
        return JSONResponse({"detail": "unknown token"}, status_code=401)

    app.post("/payments", status_code=201)(_paid_by_strict_user)
    install(app, store=open_async_store("memory://"), scope_secret=SECRET, principal=strict_user)
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
            refused = client.post("/payments", headers=headers)
            headers["Authorization"] = "Bearer t1"
            paid = client.post("/payments", headers=headers)
    finally:
        server.stop()
    assert refused.status_code == 401
    assert paid.status_code == 201


async def _paid_by_strict_user(user: Annotated[str, Depends(strict_user)]) -> dict[str, str]:
    return {"user": user}


def test_b3_a_malformed_key_is_refused_before_the_dependency_runs(payments: Payments) -> None:
    """A request refused for its key (400) never runs the principal dependency, whose lookup
    (a database session here) it would waste."""
    refused = payments.pay("t1", key='"unterminated')
    assert refused.status_code == 400
    assert payments.sessions.events == []
