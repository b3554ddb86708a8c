"""Transactional mode for FastAPI: one parameter makes a handler's writes commit with its key.

    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
    from retrysafe.transactions.fastapi import Transactional, install

    app = FastAPI()
    middleware = install(app, connect=async_sessionmaker(create_async_engine(DATABASE_URL)))

    @app.post("/payments", status_code=201)
    async def create_payment(payment: PaymentIn, tx: Transactional) -> PaymentOut:
        tx.connection.add(PaymentRow(**payment.model_dump()))
        ...

A handler that takes a `Transactional` parameter (or `Depends(transaction(required=True))` for
per-route settings) runs in transactional mode (`retrysafe.transactions.asgi`): the key's claim,
everything written with `tx.connection` and the response commit in one transaction, before the
response is sent. The parameter also marks the route exempt from the HTTP middleware
(`retrysafe.integrations.fastapi`), so both can serve one app. `install` returns the
middleware (its `settings`, `observation` and `counters`) and completes `app.openapi()`: each
transactional route shows the `Idempotency-Key` header, the replay header and the problem
answers, as `retrysafe.integrations.fastapi` does for its routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Final, Unpack

try:
    from fastapi import Depends, Request
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "retrysafe.transactions.fastapi needs FastAPI: pip install fastapi"
    ) from error

from retrysafe._clock import Clock
from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe.integrations._fastapi_principal import DependencyPrincipal
from retrysafe.integrations._routes import UNMARKED, RouteOptions, Unmarked, mark, unbound
from retrysafe.integrations.fastapi import FastAPIRoutes, document_openapi
from retrysafe.integrations.starlette import add_in_front
from retrysafe.observe import Observer
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._web import HANDLER_RAISED, TRANSACTION_KEY, RequestTransaction
from retrysafe.transactions.asgi import Connect, TransactionalMiddleware

if TYPE_CHECKING:
    from retrysafe._encryption import Keyring

__all__ = ["RequestTransaction", "Transactional", "TransactionalRoutes", "install", "transaction"]

_ATTRIBUTE: Final = "__retrysafe_transactional__"


def transaction(
    **options: Unpack[RouteOptions],
) -> Callable[[Request], Iterator[RequestTransaction[Any]]]:
    """Return a dependency that gives the handler its request's transaction.

    `tx: Annotated[RequestTransaction[Any], Depends(transaction(required=True))]`; the bare
    `Transactional` is `transaction()` with the middleware's settings.

    Args:
        options: `RouteSettings` fields for this route: `required=True`, `retention=3600`, ...
    """
    route = RouteSettings(**options)

    def request_transaction(request: Request) -> Iterator[RequestTransaction[Any]]:
        found = request.scope.get(TRANSACTION_KEY)
        if found is None:
            raise RuntimeError(
                "No transaction for this request: add retrysafe.transactions.fastapi.install("
                "app, connect=...) to the app."
            )
        transaction: RequestTransaction[Any] = found
        try:
            yield transaction
        except Exception:
            # The handler raised: its writes roll back, even if FastAPI answers for it (an
            # HTTPException's 4xx), as a raising Flask view's do (B18, docs/transactions.md).
            request.scope[HANDLER_RAISED] = True
            raise

    setattr(request_transaction, _ATTRIBUTE, route)
    return mark(request_transaction, None)  # the HTTP middleware leaves the route alone


Transactional = Annotated[RequestTransaction[Any], Depends(transaction())]
"""A handler parameter: the request's transaction; write with `tx.connection`."""


def _transactional_mark(dependant: Any) -> RouteSettings | Unmarked:
    """Return the settings of a `transaction()` dependency in `dependant`'s tree, if any."""
    for sub in dependant.dependencies:
        found = getattr(sub.call, _ATTRIBUTE, None)
        if isinstance(found, RouteSettings):
            return found
        nested = _transactional_mark(sub)
        if not isinstance(nested, Unmarked):
            return nested
    return UNMARKED


class TransactionalRoutes(FastAPIRoutes):
    """The `route_settings` hook: routes whose handlers take a `transaction()` dependency.

    Args:
        app: the FastAPI app whose routes decide.
    """

    def __init__(self, app: Any) -> None:
        super().__init__(app, routes={"/**": None})  # unmarked routes are not covered

    def mark_of(self, route: Any) -> RouteSettings | Unmarked | None:
        """Return the route's transactional settings, or UNMARKED."""
        dependant = getattr(route, "dependant", None)
        if dependant is None:
            dependant = getattr(getattr(route, "original_route", None), "dependant", None)
        return UNMARKED if dependant is None else _transactional_mark(dependant)


def install(
    app: Any,
    *,
    connect: Connect,
    table: str = DEFAULT_TABLE,
    clock: Clock | None = None,
    observers: Sequence[Observer] = (),
    encryption: Keyring | None = None,
    principal: Callable[..., Any] | None = None,
    **options: Unpack[SettingsOptions],
) -> TransactionalMiddleware:
    """Add transactional mode to FastAPI `app`, for the handlers that take a transaction.

    Args:
        app: the FastAPI app (before it starts serving).
        connect: makes each request's connection: an `async_sessionmaker`, a function
            returning a psycopg `AsyncConnection`, a pool's `connection` (see
            `retrysafe.transactions.asgi.Connect`).
        table: the records table (the store's `table` option) in that database.
        clock: the time source (default: the system clock).
        observers: who to tell what each keyed request did (`retrysafe.observe`).
        encryption: the keys that encrypt stored responses at rest: those of the store that
            shares the table (docs/encryption.md); default none.
        principal: the app's dependency that returns the authenticated user (`current_user`):
            a keyed request's scope is that user (B8), resolved before the claim, as
            `retrysafe.integrations.fastapi.install` resolves it.
        options: the HTTP middleware's settings (`required=True`, `scope_header=...`).

    Returns:
        The middleware: its `settings`, its `observation` (the observers) and its `counters`
        (what it did). The app puts it in front of its routes when it builds its middleware
        stack, as it starts serving.
    """
    middleware = TransactionalMiddleware(
        unbound,
        connect=connect,
        route_settings=TransactionalRoutes(app),
        table=table,
        clock=clock,
        observers=observers,
        encryption=encryption,
        **options,
    )

    if principal is not None:
        middleware.principal = DependencyPrincipal(app, principal)

    add_in_front(app, middleware)
    described = TransactionalRoutes(app)
    document_openapi(app, lambda: described.documented(middleware.settings), transactional=True)
    return middleware
