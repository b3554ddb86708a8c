"""The demo payments API: Starlette routes behind the idempotency middleware.

The layers, outermost first:

    Traffic          counts what the API answered (replays, 409s), from the server's side
    BearerTenant     rejects a request without a valid bearer token before anything else (B9)
                     (both in `_layers`, with the problem responses)
    IdempotencyMiddleware (retrysafe.asgi), when a store is given
    TransactionalMiddleware (retrysafe.transactions.asgi), for POST /payments when the store is
                     SQLite, PostgreSQL or MySQL: the payment and its record commit in one
                     transaction
    routes           POST/GET /payments, POST /users, GET /health

With a SQLite, PostgreSQL or MySQL store, `POST /payments` runs in transactional mode: the
handler inserts the payment on the request's own connection, in the transaction that claimed
the key in the store's table, and the response is stored and committed with it before it is
sent. A crash between the insert and storing the outcome rolls both back. The idempotency
middleware guards every other route (and `POST /payments` too with a Redis or memory store,
whose records cannot share a transaction with the demo tables).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from retrysafe._encryption import Keyring
from retrysafe._http.asgi_io import run_lifespan
from retrysafe.asgi import RouteSettings
from retrysafe.demo._layers import BearerTenant, CountingTraffic, Traffic, problem, tenant_of
from retrysafe.demo._schema import Payment, insert_payment
from retrysafe.demo._tables import DemoDatabase
from retrysafe.demo._validation import parse_payment, parse_user
from retrysafe.stores.base import AsyncStore
from retrysafe.transactions._web import TRANSACTION_KEY

__all__ = ["DemoApp", "create_app"]

_PAYMENTS: Final = RouteSettings()


class DemoApp:
    """The demo payments API as an ASGI app, with its database and its traffic counts.

    Build it with `create_app`. At lifespan shutdown it closes the store it was given, on the
    server's own event loop (where an async store's connections live).

    Attributes:
        transactional: whether `POST /payments` runs in transactional mode (the payment and
            its idempotency record commit in one transaction).
    """

    def __init__(
        self,
        app: ASGIApp,
        database: DemoDatabase,
        traffic: Traffic,
        store: AsyncStore | None,
        *,
        transactional: bool = False,
    ) -> None:
        self._app = app
        self.database = database
        self.traffic = traffic
        self.store = store
        self.transactional = transactional

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection, or the lifespan."""
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send, self.aclose)
        else:
            await self._app(scope, receive, send)

    async def aclose(self) -> None:
        """Close the store, if the demo opened one."""
        if self.store is not None:
            await self.store.aclose()


def create_app(
    database: DemoDatabase,
    *,
    store: AsyncStore | None = None,
    latency: float = 0.0,
    after_charge: Callable[[Payment], None] | None = None,
    **middleware_settings: Any,
) -> DemoApp:
    """Build the demo payments API.

    Args:
        database: where payments and user profiles are stored.
        store: the idempotency store, closed at lifespan shutdown; without one the API has no
            idempotency layer at all. When `database` is the store's own SQL database (a
            SQLite, PostgreSQL or MySQL store), `POST /payments` runs in transactional mode.
        latency: seconds each payment spends at the simulated payment processor.
        after_charge: called with each payment after its insert, before the response is made;
            tests raise from it to crash the handler between the two.
        middleware_settings: passed to `retrysafe.asgi.IdempotencyMiddleware` (and to the
            transactional middleware of `POST /payments`).
    """
    routes = Starlette(
        routes=_routes(database, latency, after_charge),
        exception_handlers={HTTPException: _http_error},
    )
    app: ASGIApp = routes
    connect = None if store is None else database.transaction_connect()
    if store is not None:
        from retrysafe.asgi import IdempotencyMiddleware  # noqa: PLC0415 -- only with a store

        if connect is not None:
            from retrysafe.transactions.asgi import (  # noqa: PLC0415 -- only with a SQL store
                TransactionalMiddleware,
            )

            app = TransactionalMiddleware(
                app,
                connect=connect,
                route_settings=_payments_only,
                table=database.records_table,
                encryption=_keyring_of(store),  # payments sealed as the store seals the rest
                **middleware_settings,
            )
            app = IdempotencyMiddleware(
                app, store=store, route_settings=_all_but_payments, **middleware_settings
            )
        else:
            app = IdempotencyMiddleware(app, store=store, **middleware_settings)
    traffic = Traffic()
    return DemoApp(
        CountingTraffic(BearerTenant(app), traffic),
        database,
        traffic,
        store,
        transactional=connect is not None,
    )


def _is_payment(scope: Scope) -> bool:
    return bool(scope["method"] == "POST" and scope["path"] == "/payments")


def _payments_only(scope: Scope) -> RouteSettings | None:
    """Transactional mode covers `POST /payments` only (its handler writes with it)."""
    return _PAYMENTS if _is_payment(scope) else None


def _all_but_payments(scope: Scope) -> RouteSettings | None:
    """The idempotency middleware covers every route but the transactional one."""
    return None if _is_payment(scope) else _PAYMENTS


def _routes(
    database: DemoDatabase, latency: float, after_charge: Callable[[Payment], None] | None
) -> list[Route]:
    async def create_payment(request: Request) -> Response:
        parsed = parse_payment(await request.body())
        if isinstance(parsed, list):
            return problem(422, "The payment is invalid; nothing was charged.", errors=parsed)
        tenant = _tenant(request)
        if latency > 0:
            await anyio.sleep(latency)  # the payment processor at work
        tx = request.scope.get(TRANSACTION_KEY)
        # In transactional mode, on the request's connection, in the transaction that holds
        # the key: the middleware stores this response and commits both together.
        insert = (
            database.insert_payment
            if tx is None
            else functools.partial(
                insert_payment, database.statements_on(tx.connection), database.tables
            )
        )
        payment = await anyio.to_thread.run_sync(
            functools.partial(
                insert,
                tenant=tenant,
                customer=parsed.customer,
                amount=parsed.amount,
                currency=parsed.currency,
            )
        )
        if after_charge is not None:
            after_charge(payment)
        return JSONResponse(payment.public(), status_code=201)

    async def list_payments(request: Request) -> Response:
        customer = request.query_params.get("customer")
        payments = await anyio.to_thread.run_sync(
            database.list_payments, _tenant(request), customer
        )
        return JSONResponse({"payments": [payment.public() for payment in payments]})

    async def create_user(request: Request) -> Response:
        parsed = parse_user(await request.body())
        if isinstance(parsed, list):
            return problem(422, "The user profile is invalid; nothing was stored.", errors=parsed)
        user, created = await anyio.to_thread.run_sync(
            functools.partial(
                database.insert_user, tenant=_tenant(request), email=parsed.email, name=parsed.name
            )
        )
        if created:
            return JSONResponse(user.public(), status_code=201)
        if user.name == parsed.name:
            # The same profile again: answer with the one that exists, created once.
            return JSONResponse(user.public(), status_code=200)
        return problem(
            409,
            f"A user with the email {parsed.email!r} already exists for this tenant, "
            "with another name; it was not changed.",
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [
        Route("/payments", create_payment, methods=["POST"]),
        Route("/payments", list_payments, methods=["GET"]),
        Route("/users", create_user, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]


def _tenant(request: Request) -> str:
    tenant = tenant_of(request)
    if tenant is None:  # BearerTenant lets no such request through
        raise HTTPException(401)
    return tenant


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException
        raise exc
    return problem(exc.status_code, exc.detail, headers=dict(exc.headers or {}))


def _keyring_of(store: AsyncStore) -> Keyring | None:
    """Return the keys an encrypted store seals outcomes with (under a replay cache, say)."""
    layer: object = store
    while layer is not None:
        keyring = getattr(layer, "keyring", None)
        if isinstance(keyring, Keyring):
            return keyring
        layer = getattr(layer, "store", None)
    return None
