"""A Litestar guard's refusal leaves no record (B9): the plugin runs the route's guards first.

Litestar runs guards inside the route's middleware stack, in the handler; the plugin's
middleware must not store their 401 or 403 as the key's outcome, or the caller's retry, once
allowed, would get the refusal again. The app is served by uvicorn on loopback.
"""

from __future__ import annotations

from typing import Any

import httpx
from litestar import Litestar, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)

from retrysafe.integrations.litestar import IdempotencyPlugin, idempotency
from retrysafe.stores.memory import AsyncMemoryStore
from tests.integrations.servers import AsgiServer

ROLES: dict[str, set[str]] = {}
CHARGES: list[str] = []


class TokenAuth(AbstractAuthenticationMiddleware):
    """The bearer token is the user's name."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = connection.headers.get("authorization", "")
        if not token.startswith("Bearer "):
            raise NotAuthorizedException
        return AuthenticationResult(user=token.removeprefix("Bearer "), auth=token)


def can_pay(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Refuse a user without the role `pay`."""
    if "pay" not in ROLES.get(connection.user, set()):
        raise NotAuthorizedException("missing role pay")


@post("/payments", guards=[can_pay], opt=idempotency(required=True))
async def pay() -> dict[str, int]:
    """Charge once."""
    CHARGES.append("alice")
    return {"charged": len(CHARGES)}


def test_b9_a_guards_refusal_is_not_the_keys_outcome() -> None:
    """A 401 from a guard is answered and not stored: once the role is granted, the retry with
    the same key runs the handler (once), and a further retry replays it."""
    ROLES.clear()
    CHARGES.clear()
    app = Litestar(
        [pay],
        middleware=[DefineMiddleware(TokenAuth)],
        plugins=[IdempotencyPlugin(store=AsyncMemoryStore(), scope_secret="s" * 32)],
    )
    server = AsgiServer(app, lifespan="on")
    headers = {"Authorization": "Bearer alice", "Idempotency-Key": "k1"}
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            refused = client.post("/payments", headers=headers)
            assert refused.status_code == 401
            ROLES["alice"] = {"pay"}
            allowed = client.post("/payments", headers=headers)
            assert allowed.status_code == 201
            assert "idempotent-replayed" not in allowed.headers
            replay = client.post("/payments", headers=headers)
            assert replay.headers["idempotent-replayed"] == "true"
    finally:
        server.stop()
    assert CHARGES == ["alice"]
