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
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Unpack

import anyio
import anyio.to_thread

from retrysafe._clock import Clock
from retrysafe._errors import IdempotencyError
from retrysafe._flow import Counters
from retrysafe._flow.observing import Observation, identify
from retrysafe._http import (
    KEY_HEADER,
    Gate,
    Response,
    RouteSettings,
    Settings,
    SettingsOptions,
    asgi_io,
    logger,
)
from retrysafe._http.asgi_io import ASGIApp, Message, Receive, Scope, Send
from retrysafe._http.scope import Scoper
from retrysafe.observe import Observer
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._async.work import AsyncWorkUnit, aload_scope_secret
from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._sync.work import WorkUnit, load_scope_secret
from retrysafe.transactions._web import (
    CLEANUP_SECONDS,
    HANDLER_RAISED,
    TRANSACTION_KEY,
    AsyncShieldCancellation,
    RequestTransaction,
    claim_options,
    connect_failed,
    handler_name,
    tracks,
)

if TYPE_CHECKING:
    from retrysafe._encryption import Keyring

__all__ = ["Connect", "RequestTransaction", "TransactionalMiddleware"]

Connect = Callable[[], Any]
"""Makes the connection a request's handler writes with: called with no arguments, it returns
an `AsyncSession`, a psycopg `AsyncConnection` or an aiomysql connection (or a coroutine of
one), a sync `Session`, psycopg or PyMySQL `Connection` or `sqlite3.Connection` (opened with
`check_same_thread=False`: its work runs in worker threads), or an async or sync context
manager of one (a pool's
`pool.connection()`). A connection it returns is closed after the request."""

# Response extensions the capture cannot see through: the app must send plain body messages.
_UNCAPTURABLE: Final = ("http.response.pathsend", "http.response.zerocopy")


def _path(scope: Scope) -> str:
    return asgi_io.route_path(scope)  # without the mount prefix, as the app routes it (B5)


class TransactionalMiddleware:
    """Run covered requests in transactional mode on the handler's own database connection.

    Args:
        app: the ASGI app to wrap.
        connect: makes each request's connection (see `Connect`).
        table: the records table (the store's `table` option), in the handler's database.
        clock: the time source (default: the system clock).
        routes: path pattern to `RouteSettings` (None: not covered), first match wins;
            unlisted paths use `settings`. Cover only routes whose handlers write with the
            request's transaction.
        route_settings: instead of `routes`, a function of the scope returning the request's
            `RouteSettings`, or None if it is not covered (framework integrations).
        settings: a `retrysafe.asgi.Settings` to start from; `options` override its fields.
        observers: who to tell what each keyed request did (`retrysafe.observe`); their face
            is "transaction".
        encryption: the keys that encrypt stored responses at rest: those of the store that
            shares the table (docs/encryption.md); default none.
        options: any `Settings` field by name (`required=True`, `retention=3600`, ...).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        connect: Connect,
        table: str = DEFAULT_TABLE,
        clock: Clock | None = None,
        routes: Mapping[str, RouteSettings | None] | None = None,
        route_settings: Callable[[Scope], RouteSettings | None] | None = None,
        settings: Settings | None = None,
        observers: Sequence[Observer] = (),
        encryption: Keyring | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        # Every method of a covered route runs in a transaction, so the gate only routes.
        self._gate = Gate(settings, routes, route_settings, _path, **options)
        self._hook = route_settings
        self.settings = self._gate.settings
        self.app = app
        self.connect = connect
        self.table = table
        self.clock = clock
        self.encryption = encryption
        self.counters = Counters()
        """What the middleware did: executions, replays, and commits that failed."""
        self.observation = Observation("transaction", observers)
        """The observers (`retrysafe.observe`)."""
        secret = Scoper.configured_secret(self.settings)
        self._scoper: Scoper | None = None if secret is None else Scoper(secret)

    principal: Callable[[Scope], Awaitable[object]] | None = None
    """Where no authentication middleware named the user (`scope["user"]`), a coroutine of the
    scope that returns the request's user, or None (B8): FastAPI's `install(principal=...)`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; only HTTP requests to covered routes are changed."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self._settings_for(scope)
        if settings is None:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == KEY_HEADER]
        if not tracks(settings, scope["method"], bool(values)):
            await self._transact(scope, receive, send, settings, None)  # a plain transaction
            return
        operation = self.observation.start()
        try:
            try:
                scoper = self._scoper or await self._load_scoper()
            except (_ConnectError, IdempotencyError):
                logger.exception("Cannot read the scope secret from the records table")
                await asgi_io.respond(send, connect_failed(settings))
                return
            tracked = await asgi_io.track_request(
                scope, receive, send, settings, values, scoper=scoper, principal=self.principal
            )
            if tracked is None:
                return
            identity, fingerprint, body = tracked
            identify(identity)
            receive = asgi_io.replay_body(body, receive)
            claim = claim_options(settings, self.clock, identity, fingerprint)
            await self._transact(scope, receive, send, settings, claim)
        finally:
            self.observation.end(operation)

    async def _transact(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        settings: Settings,
        claim: ClaimOptions | None,
    ) -> None:
        """Run the request in a transaction: a claim transaction if it has a `claim`."""
        try:
            async with _connection(self.connect) as connection:
                unit = self._unit(connection, claim, settings)
                await self._run(scope, receive, send, unit)
        except _ConnectError:
            await asgi_io.respond(send, connect_failed(settings))

    async def _load_scoper(self) -> Scoper:
        """Load the scope secret kept in the records table (B8), once."""
        async with _connection(self.connect) as given, contextlib.AsyncExitStack() as stack:
            own = drivers.session_of_its_own(given)  # not in a transaction a hook opened
            connection = given if own is None else await _enter(stack, own)
            if drivers.is_async_connection(connection):
                secret, committed = await aload_scope_secret(
                    connection, self.table, self.encryption
                )
            elif drivers.is_sync_connection(connection):
                secret, committed = await anyio.to_thread.run_sync(
                    load_scope_secret, connection, self.table, self.encryption
                )
            else:
                raise TypeError(f"connect() gave {connection!r}, not a connection or session.")
        scoper = Scoper(secret)
        if committed:  # a secret created in the connection's open transaction may roll back
            self._scoper = scoper
        return scoper

    def _settings_for(self, scope: Scope) -> Settings | None:
        """Return the settings of the request's route, or None if it is not covered (B5)."""
        if self._hook is None:
            return self._gate.router.for_path(_path(scope))
        return self._gate.router.for_route(self._hook(scope))

    def _unit(
        self, connection: object, claim: ClaimOptions | None, settings: Settings
    ) -> AsyncWorkUnit | _ThreadedWorkUnit:
        """Return the request's work unit: async, or a sync one run in worker threads."""
        if drivers.is_async_connection(connection):
            return AsyncWorkUnit(
                connection, self.table, claim, settings, self.counters, encryption=self.encryption
            )
        if drivers.is_sync_connection(connection):
            unit = WorkUnit(
                connection, self.table, claim, settings, self.counters, encryption=self.encryption
            )
            return _ThreadedWorkUnit(unit)
        raise TypeError(f"connect() gave {connection!r}, not a connection or session.")

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, unit: AsyncWorkUnit | _ThreadedWorkUnit
    ) -> None:
        """Run the app in the unit's transaction; send its response once that has committed."""
        answer = await unit.start()
        if answer is not None:
            await asgi_io.respond(send, answer)
            return
        app_scope = {**scope, TRANSACTION_KEY: unit.request_transaction()}
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _UNCAPTURABLE):
            app_scope["extensions"] = {
                k: v for k, v in extensions.items() if k not in _UNCAPTURABLE
            }
        messages: list[Message] = []
        answered = False

        async def capture(message: Message) -> None:
            nonlocal answered
            if message["type"] not in ("http.response.start", "http.response.body"):
                await send(message)
            elif not answered:
                messages.append(message)
                response = _response_of(messages)
                if response is None:
                    return
                answered = True
                if app_scope.get(HANDLER_RAISED):  # answered for a raising handler: roll back
                    await unit.rollback()
                    await asgi_io.respond(send, response)
                    return
                # The last body message: commit, then answer (B18).
                handler = _handler_of(app_scope)
                answer = await unit.finish(response, handler=handler)
                await asgi_io.respond(send, answer or response)

        try:
            await self.app(app_scope, receive, capture)
        except Exception:
            if not answered:
                await unit.rollback()
                raise
            logger.exception("The app raised after its response was committed; it stands")
        except BaseException:
            if not answered:
                await unit.rollback()
            raise
        if not answered:  # the app sent no complete response
            await unit.rollback()


class _ThreadedWorkUnit:
    """A sync connection's work unit, run in worker threads (see `AsyncWorkUnit`)."""

    def __init__(self, unit: WorkUnit) -> None:
        self._unit = unit

    def request_transaction(self) -> RequestTransaction[object]:
        return self._unit.request_transaction()

    async def start(self) -> Response | None:
        return await anyio.to_thread.run_sync(self._unit.start)

    async def finish(self, response: Response, *, handler: str) -> Response | None:
        # A worker thread runs to its end whatever happens to the request: no shield needed.
        finish = functools.partial(self._unit.finish, response, handler=handler)
        return await anyio.to_thread.run_sync(finish)

    async def rollback(self) -> None:
        with AsyncShieldCancellation(CLEANUP_SECONDS):
            await anyio.to_thread.run_sync(self._unit.rollback)


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
    """Return the connection `connect()` gave (the current session of a scoped session),
    arranging for `stack` to close it."""
    if inspect.isawaitable(made):
        made = await made
    made = drivers.unscoped(made)
    if drivers.is_connection(made):
        stack.push_async_callback(_close, made)
        return made
    if hasattr(made, "__aenter__"):
        return await stack.enter_async_context(made)
    if hasattr(made, "__enter__"):
        return stack.enter_context(made)
    raise TypeError(f"connect() returned {made!r}, not a connection or session.")


async def _close(connection: Any) -> None:
    with anyio.CancelScope(shield=True):
        if drivers.is_async_mysql_connection(connection):
            # aiomysql's close() drops the socket without a goodbye; ensure_closed() says one.
            await connection.ensure_closed()
        elif drivers.is_async_psycopg_connection(connection) or drivers.is_async_session(
            connection
        ):
            await connection.close()
        else:
            await anyio.to_thread.run_sync(connection.close)


def _handler_of(scope: Scope) -> str:
    """Return the name of the handler that answered, for a log line: the endpoint the app's
    router put in the scope (Starlette's, FastAPI's), else the request's method and path."""
    endpoint = scope.get("endpoint")
    if endpoint is not None:
        return handler_name(endpoint)
    return f"{scope['method']} {scope['path']}"


def _response_of(messages: list[Message]) -> Response | None:
    """Return the whole response the app sent, or None if it sent only part of one."""
    start = next((m for m in messages if m["type"] == "http.response.start"), None)
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    if start is None or not bodies or bodies[-1].get("more_body", False):
        return None
    body = b"".join(m.get("body", b"") for m in bodies)
    return Response(start["status"], tuple(start.get("headers", ())), body)
