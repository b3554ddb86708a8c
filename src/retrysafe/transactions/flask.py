"""Transactional mode for Flask: one decorator makes a view's writes commit with its key.

    from flask import Flask
    from retrysafe.transactions.flask import install, transactional

    app = Flask(__name__)
    install(app, connect=lambda: sqlite3.connect("app.db"))

    @app.post("/payments")
    @transactional(required=True)
    def create_payment(tx):
        tx.connection.execute("INSERT INTO payments ...")
        return {"id": ...}, 201

The decorated view gets the request's `RequestTransaction` as its `tx` argument and writes with
`tx.connection`. The key's claim, those writes and the response (as Flask makes it from the
view's return value) commit in one transaction, before the response leaves the view; a repeat
gets the stored response with `Idempotent-Replayed: true`. The rules are the HTTP middleware's
(docs/http.md); the decorator also marks the view exempt from that middleware
(`retrysafe.integrations.flask`), so both can serve one app.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, TypeVar, Unpack

try:
    import flask
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("retrysafe.transactions.flask needs Flask: pip install flask") from error

from retrysafe._clock import Clock
from retrysafe._flow import Counters
from retrysafe._flow.observing import Observation, identify
from retrysafe._http import Response, RouteSettings, Settings, SettingsOptions, logger
from retrysafe._http.scope import Scoper
from retrysafe._http.wsgi_io import prepare_request
from retrysafe.integrations._routes import RouteOptions, mark
from retrysafe.observe import Observer
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._sync.work import WorkUnit, load_scope_secret
from retrysafe.transactions._web import (
    RequestTransaction,
    claim_options,
    connect_failed,
    handler_name,
    tracks,
)

if TYPE_CHECKING:
    from retrysafe._encryption import Keyring

__all__ = ["RequestTransaction", "install", "transactional"]

F = TypeVar("F", bound=Callable[..., Any])

_EXTENSION: Final = "retrysafe.transactions"


@dataclass(slots=True)
class _Config:
    connect: Callable[[], Any]
    settings: Settings
    table: str
    clock: Clock | None
    counters: Counters
    observation: Observation
    scoper: Scoper | None = None
    encryption: Keyring | None = None


def install(
    app: flask.Flask,
    *,
    connect: Callable[[], Any],
    table: str = DEFAULT_TABLE,
    clock: Clock | None = None,
    settings: Settings | None = None,
    observers: Sequence[Observer] = (),
    encryption: Keyring | None = None,
    **options: Unpack[SettingsOptions],
) -> Counters:
    """Configure transactional mode for `app`'s `@transactional` views; return its counters.

    Args:
        app: the Flask app.
        connect: makes each request's connection: a `sqlite3.Connection`, a psycopg or
            PyMySQL `Connection` or a SQLAlchemy `Session`, or a context manager of one (a pool's
            `pool.connection()`). A connection it returns is closed after the request.
        table: the records table (the store's `table` option) in that database.
        clock: the time source (default: the system clock).
        settings: a `retrysafe.wsgi.Settings` to start from; `options` override its fields.
        observers: who to tell what each keyed request did (`retrysafe.observe`); their face
            is "transaction".
        encryption: the keys that encrypt stored responses at rest: those of the store that
            shares the table (docs/encryption.md); default none.
        options: the HTTP middleware's settings (`required=True`, `scope_header=...`).
    """
    base = settings or Settings()
    counters = Counters()
    merged = replace(base, **options) if options else base
    secret = Scoper.configured_secret(merged)
    app.extensions[_EXTENSION] = _Config(
        connect=connect,
        settings=merged,
        table=table,
        clock=clock,
        counters=counters,
        observation=Observation("transaction", observers),
        scoper=None if secret is None else Scoper(secret),
        encryption=encryption,
    )
    return counters


def transactional(**options: Unpack[RouteOptions]) -> Callable[[F], F]:
    """Run the view in transactional mode, passing it the request's transaction as `tx`.

    Args:
        options: `RouteSettings` fields for this view: `required=True`, `retention=3600`, ...
    """
    route = RouteSettings(**options)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def transactional_view(*args: Any, **kwargs: Any) -> Any:
            return _handle(view, route, args, kwargs)

        return mark(transactional_view, None)  # type: ignore[return-value]

    return decorate


def _handle(view: Callable[..., Any], route: RouteSettings, args: Any, kwargs: Any) -> Any:
    config: _Config | None = flask.current_app.extensions.get(_EXTENSION)
    if config is None:
        raise RuntimeError(
            "Add retrysafe.transactions.flask.install(app, connect=...) to the app first."
        )
    settings = config.settings.with_route(route)
    request = flask.request
    values = [value.encode("latin-1") for value in request.headers.getlist("Idempotency-Key")]
    if not tracks(settings, request.method, bool(values)):
        return _transact(functools.partial(view, *args, **kwargs), config, settings, None)
    operation = config.observation.start()
    try:
        try:
            scoper = config.scoper or _load_scoper(config)
        except Exception:
            logger.exception("Cannot read the scope secret from the records table")
            return _flask_response(connect_failed(settings))
        prepared = prepare_request(request.environ, settings, values, scoper)
        if isinstance(prepared, Response):
            return _flask_response(prepared)
        environ, identity, fingerprint = prepared
        identify(identity)
        request.environ.update(environ)  # the view reads the body from its buffered copy
        claim = claim_options(settings, config.clock, identity, fingerprint)
        return _transact(functools.partial(view, *args, **kwargs), config, settings, claim)
    finally:
        config.observation.end(operation)


def _transact(
    view: Callable[..., Any],
    config: _Config,
    settings: Settings,
    claim: ClaimOptions | None,
) -> Any:
    """Run the view in a transaction: a claim transaction if it has a `claim`."""
    try:
        made = config.connect()
    except Exception:
        return _flask_response(connect_failed(settings))
    with contextlib.ExitStack() as stack:
        connection = _enter(stack, made)
        if not drivers.is_sync_connection(connection):
            raise TypeError(f"connect() gave {connection!r}, not a sync connection or session.")
        unit = WorkUnit(
            connection, config.table, claim, settings, config.counters, encryption=config.encryption
        )
        return _run(view, unit)


def _run(view: Callable[..., Any], unit: WorkUnit) -> Any:
    """Run the view in the unit's transaction; return its response once that has committed."""
    answer = unit.start()
    if answer is not None:
        return _flask_response(answer)
    try:
        response = flask.current_app.make_response(view(tx=unit.request_transaction()))
        body = response.get_data()
    except BaseException:
        unit.rollback()
        raise
    headers = tuple(
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    )
    answered = Response(response.status_code, headers, body)
    problem = unit.finish(answered, handler=handler_name(view))
    return response if problem is None else _flask_response(problem)


def _load_scoper(config: _Config) -> Scoper:
    """Load the scope secret kept in the records table (B8), once."""
    with contextlib.ExitStack() as stack:
        connection = _enter(stack, config.connect())
        own = drivers.session_of_its_own(connection)  # not in a transaction a hook opened
        if own is not None:
            connection = _enter(stack, own)
        if not drivers.is_sync_connection(connection):
            raise TypeError(f"connect() gave {connection!r}, not a sync connection or session.")
        secret, committed = load_scope_secret(connection, config.table, config.encryption)
    scoper = Scoper(secret)
    if committed:  # a secret created in the session's open transaction may yet roll back
        config.scoper = scoper
    return scoper


def _enter(stack: contextlib.ExitStack, made: Any) -> object:
    """Return the connection `connect()` gave (the current session of a `scoped_session`),
    arranging for `stack` to close it."""
    made = drivers.unscoped(made)
    if drivers.is_connection(made) or not hasattr(made, "__enter__"):
        stack.callback(made.close)
        return made
    return stack.enter_context(made)


def _flask_response(response: Response) -> flask.Response:
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers
    ]
    return flask.Response(response.body, status=response.status, headers=headers)
