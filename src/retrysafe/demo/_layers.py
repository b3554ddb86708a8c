"""The demo API's own layers outside the idempotency middleware, and its problem responses.

    CountingTraffic  counts what the API answered to `POST /payments` (replays, 409s) into a
                     `Traffic`, from the server's side, as responses leave
    BearerTenant     rejects a request without a valid bearer token before anything else (B9)

`problem` builds the RFC 9457 answers of these layers and of the routes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrysafe._http import problem_response
from retrysafe.demo._validation import FieldError, parse_tenant

__all__ = [
    "REPLAY_HEADER",
    "BearerTenant",
    "CountingTraffic",
    "TenantTraffic",
    "Traffic",
    "problem",
    "tenant_of",
]

REPLAY_HEADER = b"idempotent-replayed"


def problem(
    status: int,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Return an RFC 9457 problem response (`type` about:blank: the status says it all).

    The body and headers are `retrysafe._http.problem_response`'s, as the middleware's own
    problems; `errors` is an extension member listing the invalid fields.
    """
    answer = problem_response(
        "about:blank",
        HTTPStatus(status).phrase,
        status,
        detail,
        extra_headers=[
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ],
        extensions={"errors": [error.as_dict() for error in errors]} if errors else None,
    )
    # A later line wins, so an extra header replaces a default one of the same name.
    return Response(
        answer.body,
        status_code=answer.status,
        headers={name.decode("latin-1"): value.decode("latin-1") for name, value in answer.headers},
    )


@dataclass
class TenantTraffic:
    """What the API answered one tenant's `POST /payments` requests."""

    requests: int = 0
    replays: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    @property
    def conflicts(self) -> int:
        """Responses with status 409 (a duplicate arrived while the first was in flight)."""
        return self.statuses[409]


@dataclass
class Traffic:
    """What the API answered to `POST /payments`, per tenant, counted as responses leave.

    A response counted here may still be lost on its way back: that is the point of the demo.
    """

    tenants: dict[str, TenantTraffic] = field(default_factory=dict)

    def of(self, tenant: str) -> TenantTraffic:
        """Return the counts of one tenant (zero if it sent nothing)."""
        return self.tenants.get(tenant) or TenantTraffic()

    def count(self, tenant: str, status: int, replayed: bool) -> None:
        """Count one response."""
        counts = self.tenants.setdefault(tenant, TenantTraffic())
        counts.requests += 1
        counts.statuses[status] += 1
        counts.replays += replayed


class CountingTraffic:
    """Count `POST /payments` responses into a `Traffic`, by tenant."""

    def __init__(self, app: ASGIApp, traffic: Traffic) -> None:
        self.app = app
        self.traffic = traffic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"], scope["path"]) != ("POST", "/payments"):
            await self.app(scope, receive, send)
            return
        tenant = tenant_of(Request(scope)) or ""
        traffic = self.traffic

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                replayed = any(k.lower() == REPLAY_HEADER and v == b"true" for k, v in headers)
                traffic.count(tenant, message["status"], replayed)
            await send(message)

        await self.app(scope, receive, counting_send)


class BearerTenant:
    """Answer 401 to a request without `Authorization: Bearer <token>`; the token is the tenant.

    It runs before the idempotency layer, so a rejected request leaves no record (B9).
    """

    def __init__(
        self, app: ASGIApp, *, open_paths: frozenset[str] = frozenset({"/health"})
    ) -> None:
        self.app = app
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if tenant_of(Request(scope)) is None:
            response = problem(
                401,
                "Send 'Authorization: Bearer <token>'; the token names the tenant.",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def tenant_of(request: Request) -> str | None:
    """Return the tenant named by the request's bearer token."""
    return parse_tenant(request.headers.get("authorization"))
