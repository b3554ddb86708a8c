"""Transactional mode for ASGI apps: a handler's writes and its key commit in one transaction.

    from retrysafe.transactions.asgi import TransactionalMiddleware

    app = TransactionalMiddleware(app, connect=async_sessionmaker(engine),
                                  routes={"/payments": RouteSettings(required=True)})

For each request to a covered route, the middleware opens a connection with `connect`, begins
a transaction, claims the key in it (the store's table, the store's statements), and hands the
app a `RequestTransaction` under the scope key `"retrysafe.transaction"`: the handler writes
with `tx.connection`. When the app has answered, the middleware stores the response as the
key's outcome, commits, and only then sends the response. A duplicate that arrives meanwhile
waits on the key (PostgreSQL) or the write lock (SQLite), then gets the stored response
(`Idempotent-Replayed: true`). An exception, a 5xx (by the outcome policy) or a crash rolls the
claim back with the writes; a commit that fails answers 503, so the client retries. A request
without a key (optional keys) still gets a transaction: its writes commit by the same policy.

The key, scope, fingerprint, replay and problem rules are the HTTP middleware's
(docs/http.md); FastAPI apps use `retrysafe.transactions.fastapi` instead of routing by path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Unpack

import anyio
import anyio.to_thread

from retrysafe._clock import Clock
from retrysafe._errors import IdempotencyError
from retrysafe._flow import Count, Counters
from retrysafe._http import (
    KEY_HEADER,
    Router,
    RouteSettings,
    Settings,
    SettingsOptions,
    logger,
    replay_response,
    store_unavailable,
)
from retrysafe._http.asgi_io import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    replay_body,
    respond,
    track_request,
)
from retrysafe._record import Identity
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._web import (
    TRANSACTION_KEY,
    AsyncWorkUnit,
    RequestTransaction,
    is_async_connection,
    is_connection,
    outcome_of,
    refused,
)

__all__ = ["Connect", "RequestTransaction", "TransactionalMiddleware"]

Connect = Callable[[], Any]
"""Makes the connection a request's handler writes with: called with no arguments, it returns
an `AsyncSession`, a psycopg `AsyncConnection` (or a coroutine of one), a sync `Session`,
psycopg `Connection` or `sqlite3.Connection` (opened with `check_same_thread=False`: its work
runs in worker threads), or an async or sync context manager of one (a pool's
`pool.connection()`). A connection it returns is closed after the request."""

# Response extensions the capture cannot see through: the app must send plain body messages.
_UNCAPTURABLE: Final = ("http.response.pathsend", "http.response.zerocopy")
_CLEANUP_SECONDS: Final = 5.0


class TransactionalMiddleware:
    """Run covered requests in transactional mode on the handler's own database connection.

    Args:
        app: the ASGI app to wrap.
        connect: makes each request's connection (see `Connect`).
        routes: path pattern to `RouteSettings` (None: not covered), first match wins;
            unlisted paths use `settings`. Cover only routes whose handlers write with the
            request's transaction.
        route_settings: instead of `routes`, a function of the scope returning the request's
            `RouteSettings`, or None if it is not covered (framework integrations).
        settings: a `retrysafe.asgi.Settings` to start from; `options` override its fields.
        table: the records table (the store's `table` option), in the handler's database.
        clock: the time source (default: the system clock).
        options: any `Settings` field by name (`required=True`, `retention=3600`, ...).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        connect: Connect,
        routes: Mapping[str, RouteSettings | None] | None = None,
        route_settings: Callable[[Scope], RouteSettings | None] | None = None,
        settings: Settings | None = None,
        table: str = DEFAULT_TABLE,
        clock: Clock | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        self.app = app
        self.connect = connect
        self.table = table
        self.clock = clock
        base = settings or Settings()
        self.settings = dataclasses.replace(base, **options) if options else base
        self.counters = Counters()
        """What the middleware did: executions, replays, and commits that failed."""
        self._router = Router(self.settings, routes, hooked=route_settings is not None)
        self._hook = route_settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; only HTTP requests to covered routes are changed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._hook is None:
            settings = self._router.for_path(scope["path"])
        else:
            settings = self._router.for_route(self._hook(scope))
        if settings is None:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == KEY_HEADER]
        identity: Identity | None = None
        fingerprint = ""
        if scope["method"] in settings.methods and (values or settings.required):
            tracked = await track_request(scope, receive, send, settings, values)
            if tracked is None:
                return
            identity, fingerprint, body = tracked
            receive = replay_body(body, receive)
        try:
            async with _connection(self.connect) as connection:
                unit = AsyncWorkUnit(
                    connection,
                    identity=identity,
                    fingerprint=fingerprint,
                    settings=settings,
                    table=self.table,
                    clock=self.clock,
                )
                await self._run(
                    scope, receive, send, settings=settings, connection=connection, unit=unit
                )
        except _ConnectError:
            logger.exception("Cannot open the database connection for a transactional request")
            await respond(send, store_unavailable(settings))

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        connection: object,
        unit: AsyncWorkUnit,
    ) -> None:
        try:
            await unit.begin()
        except IdempotencyError as error:
            response = refused(error, settings)
            if response is None:
                raise
            await respond(send, response)
            return
        record = unit.record
        if unit.replay and record is not None:
            await _shielded(unit.rollback)
            self.counters.add(Count.REPLAYS)
            await respond(send, replay_response(record, settings))
            return
        if record is not None:
            self.counters.add(Count.EXECUTIONS)
        tx = RequestTransaction(connection, None if record is None else record.identity, record)
        app_scope = {**scope, TRANSACTION_KEY: tx}
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _UNCAPTURABLE):
            app_scope["extensions"] = {
                k: v for k, v in extensions.items() if k not in _UNCAPTURABLE
            }
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            if message["type"] in ("http.response.start", "http.response.body"):
                messages.append(message)
            else:
                await send(message)

        try:
            await self.app(app_scope, receive, capture)
        except BaseException:
            await _shielded(unit.rollback)
            raise
        status, headers, body = _response_of(messages)
        if status is None:  # the app sent no complete response
            await _shielded(unit.rollback)
            return
        try:
            with anyio.CancelScope(shield=True):
                await unit.commit(outcome_of(status, headers, body, settings))
        except Exception:
            self.counters.add(Count.COMPLETE_FAILURES)
            logger.exception("The transaction of a request failed to commit; it was not applied")
            await _shielded(unit.rollback)
            await respond(send, store_unavailable(settings))
            return
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class _ConnectError(Exception):
    """`connect` failed: the database cannot be used for this request."""


@contextlib.asynccontextmanager
async def _connection(connect: Connect) -> AsyncIterator[object]:
    """Open a connection with `connect` and close it (or leave its context) afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            connection = await _enter(stack, connect())
        except Exception as error:
            raise _ConnectError from error
        yield connection


async def _enter(stack: contextlib.AsyncExitStack, made: Any) -> object:
    """Return the connection `connect()` gave, arranging for `stack` to close it."""
    if inspect.isawaitable(made):
        made = await made
    if is_connection(made):
        stack.push_async_callback(_close, made)
        return made
    if hasattr(made, "__aenter__"):
        return await stack.enter_async_context(made)
    if hasattr(made, "__enter__"):
        return stack.enter_context(made)
    raise TypeError(f"connect() returned {made!r}, not a connection or session.")


async def _close(connection: Any) -> None:
    with anyio.CancelScope(shield=True):
        if is_async_connection(connection):
            await connection.close()
        else:
            await anyio.to_thread.run_sync(connection.close)


async def _shielded(call: Callable[[], Any]) -> None:
    """Run a rollback even if the request was cancelled; log a failure, never raise it."""
    with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
        try:
            await call()
        except Exception:
            logger.exception("Rolling back a transactional request failed")


def _response_of(messages: list[Message]) -> tuple[int | None, list[Any], bytes]:
    """Return the status, headers and whole body the app sent, or a None status if partial."""
    start = next((m for m in messages if m["type"] == "http.response.start"), None)
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    if start is None or not bodies or bodies[-1].get("more_body", False):
        return None, [], b""
    body = b"".join(m.get("body", b"") for m in bodies)
    return start["status"], list(start.get("headers", ())), body
