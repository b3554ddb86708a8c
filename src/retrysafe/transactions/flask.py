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
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar, Unpack

try:
    import flask
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("retrysafe.transactions.flask needs Flask: pip install flask") from error

from retrysafe._clock import Clock
from retrysafe._errors import IdempotencyError
from retrysafe._flow import Count, Counters
from retrysafe._http import (
    RequestView,
    Response,
    RouteSettings,
    Settings,
    SettingsOptions,
    check_content_length,
    logger,
    new_identity,
    read_key,
    replay_response,
    store_unavailable,
    too_large,
)
from retrysafe._record import Identity
from retrysafe.integrations._routes import RouteOptions, mark
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._web import (
    RequestTransaction,
    WorkUnit,
    is_connection,
    outcome_of,
    refused,
)

__all__ = ["RequestTransaction", "install", "transactional"]

F = TypeVar("F", bound=Callable[..., Any])

_EXTENSION: Final = "retrysafe.transactions"


@dataclass(frozen=True, slots=True)
class _Config:
    connect: Callable[[], Any]
    settings: Settings
    table: str
    clock: Clock | None
    counters: Counters


def install(
    app: flask.Flask,
    *,
    connect: Callable[[], Any],
    table: str = DEFAULT_TABLE,
    clock: Clock | None = None,
    settings: Settings | None = None,
    **options: Unpack[SettingsOptions],
) -> Counters:
    """Configure transactional mode for `app`'s `@transactional` views; return its counters.

    Args:
        app: the Flask app.
        connect: makes each request's connection: a `sqlite3.Connection`, a psycopg
            `Connection` or a SQLAlchemy `Session`, or a context manager of one (a pool's
            `pool.connection()`). A connection it returns is closed after the request.
        table: the records table (the store's `table` option) in that database.
        clock: the time source (default: the system clock).
        settings: a `retrysafe.wsgi.Settings` to start from; `options` override its fields.
        options: the HTTP middleware's settings (`required=True`, `scope_header=...`).
    """
    base = settings or Settings()
    counters = Counters()
    app.extensions[_EXTENSION] = _Config(
        connect=connect,
        settings=replace(base, **options) if options else base,
        table=table,
        clock=clock,
        counters=counters,
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
    identity: Identity | None = None
    fingerprint = ""
    if request.method in settings.methods and (values or settings.required):
        key = read_key(values, settings)
        if isinstance(key, Response):
            return _flask_response(key)
        length = request.headers.get("Content-Length", "").encode("latin-1")
        rejected = check_content_length(length or None, settings)
        body = b"" if rejected is not None else request.get_data(cache=True)
        if rejected is not None or len(body) > settings.max_body_size:
            return _flask_response(rejected or too_large(settings))
        view_of_request = _request_view(request)
        identity = new_identity(settings, view_of_request, key)
        fingerprint = settings.fingerprint_of(view_of_request, body)
    try:
        made = config.connect()
    except Exception:
        logger.exception("Cannot open the database connection for a transactional request")
        return _flask_response(store_unavailable(settings))
    with contextlib.ExitStack() as stack:
        connection = _enter(stack, made)
        unit = WorkUnit(
            connection,
            identity=identity,
            fingerprint=fingerprint,
            settings=settings,
            table=config.table,
            clock=config.clock,
        )
        call = functools.partial(view, *args, **kwargs)
        return _run(call, settings=settings, config=config, connection=connection, unit=unit)


def _run(
    view: Callable[..., Any],
    *,
    settings: Settings,
    config: _Config,
    connection: object,
    unit: WorkUnit,
) -> Any:
    try:
        unit.begin()
    except IdempotencyError as error:
        problem = refused(error, settings)
        if problem is None:
            raise
        return _flask_response(problem)
    record = unit.record
    if unit.replay and record is not None:
        unit.rollback()
        config.counters.add(Count.REPLAYS)
        return _flask_response(replay_response(record, settings))
    if record is not None:
        config.counters.add(Count.EXECUTIONS)
    tx = RequestTransaction(connection, None if record is None else record.identity, record)
    try:
        response = flask.current_app.make_response(view(tx=tx))
        body = response.get_data()
    except BaseException:
        _quietly(unit.rollback)
        raise
    headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    ]
    try:
        unit.commit(outcome_of(response.status_code, headers, body, settings))
    except Exception:
        config.counters.add(Count.COMPLETE_FAILURES)
        logger.exception("The transaction of a request failed to commit; it was not applied")
        _quietly(unit.rollback)
        return _flask_response(store_unavailable(settings))
    return response


def _enter(stack: contextlib.ExitStack, made: Any) -> object:
    """Return the connection `connect()` gave, arranging for `stack` to close it."""
    if is_connection(made) or not hasattr(made, "__enter__"):
        stack.callback(made.close)
        return made
    return stack.enter_context(made)


def _quietly(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:
        logger.exception("Rolling back a transactional request failed")


def _request_view(request: flask.Request) -> RequestView:
    return RequestView(
        method=request.method,
        path=request.path,
        query_string=request.query_string,
        headers=[
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.items()
        ],
        raw=request.environ,
    )


def _flask_response(response: Response) -> flask.Response:
    headers = [
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers
    ]
    return flask.Response(response.body, status=response.status, headers=headers)
