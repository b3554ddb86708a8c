"""`versioned_message`'s transactional mode: the version's compare-and-set in the transaction of
the handler's own writes (`AsyncSQLVersions`), on one of two kinds of target:

- the connection the handler writes with, for the process's life: deliveries take turns on
  it. Once it is closed (the server ended it: a failover, an idle timeout, an administrator),
  nothing can be applied on it again: `ConnectionClosedError`, on every delivery;
- a `connect` callable (`pool.connection` of a psycopg pool, or a function that opens a
  connection): each delivery gets a connection of its own, passed to the handler as its first
  argument, and closed (or given back to its pool) afterwards. A connection the server ended
  fails one delivery (requeued); the next gets a working one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio

from retrysafe._errors import ConfigurationError, StoreError
from retrysafe._versions import DEFAULT_TABLE

__all__ = ["ConnectionClosedError", "in_transaction", "refuse_target"]


class ConnectionClosedError(StoreError):
    """The connection given to `versioned_message` is closed, so no delivery can be applied on
    it again (nothing was: the transaction was rolled back with the connection).

    The message is not at fault, so `should_requeue` requeues it, for a consumer that can apply
    it; but this one cannot, until it is restarted: stop consuming (exit, and let the
    supervisor start the process again), or give `versioned_message` a `connect` callable (a
    pool's `pool.connection`), which recovers by itself.
    """


def refuse_target(target: object) -> str | None:
    """Return why `target` cannot be transactional mode's, or None if it can."""
    drivers = _drivers()
    if drivers.is_mysql_connection(target) or drivers.is_async_mysql_connection(target):
        return (
            "versioned_message's transactional mode runs on sqlite3 and psycopg connections, "
            "not on MySQL or MariaDB: give it a store instead (open_store('mysql://...'))."
        )
    if drivers.is_connection(target) and not drivers.is_session(target):
        return None
    if callable(getattr(target, "connection", None)) and callable(getattr(target, "getconn", None)):
        return (
            "For a pool, give versioned_message(connect=pool.connection, ...): each delivery "
            "then gets a connection of its own, passed to the handler first."
        )
    return (
        "versioned_message takes a store, a sqlite3.Connection or a psycopg Connection or "
        f"AsyncConnection (or connect=, a callable that opens one), not {type(target).__name__}."
    )


def in_transaction(target: Any, namespace: str, table: str | None) -> Any:
    """Return what wraps a handler in transactional mode, on a connection or (any other
    `target`) a `connect` callable."""
    table = DEFAULT_TABLE if table is None else table
    if _drivers().is_connection(target):
        return functools.partial(_on_connection, target, _versions(target, namespace, table))
    return functools.partial(_on_connect, target, (namespace, table))


def _on_connection(connection: Any, versions: Any, func: Any, read: Any, counter: Any) -> Any:
    """Wrap a handler that writes with `connection`: one delivery at a time on it."""
    from retrysafe.consumers._versioned import applied, counted  # noqa: PLC0415 - a cycle

    if inspect.iscoroutinefunction(func):
        lock = anyio.Lock()  # one transaction at a time on the connection

        @functools.wraps(func)
        async def handle_async(*args: Any, **kwargs: Any) -> Any:
            delivery = read(args, kwargs)
            effect = functools.partial(func, *args, **kwargs)
            async with lock:
                with _closed_is_final(connection):
                    result = await applied(versions, delivery, effect)
            return counted(counter, result)

        return handle_async
    guard = threading.Lock()

    @functools.wraps(func)
    def handle_sync(*args: Any, **kwargs: Any) -> Any:
        delivery = read(args, kwargs)
        with guard, _closed_is_final(connection):
            result = applied(versions, delivery, functools.partial(func, *args, **kwargs))
        return counted(counter, result)

    return handle_sync


def _on_connect(
    connect: Callable[[], Any], names: tuple[str, str], func: Any, read: Any, counter: Any
) -> Any:
    """Wrap a handler that takes, first, the connection `connect` made for its delivery
    (`names`: the namespace and the versions table)."""
    from retrysafe.consumers._versioned import applied, counted  # noqa: PLC0415 - a cycle

    namespace, table = names
    known = {"prepared": False}  # once the table is known to exist, deliveries skip the check

    def versions_on(connection: Any, is_async: bool) -> Any:
        if _drivers().is_async_psycopg_connection(connection) != is_async:
            raise ConfigurationError(
                f"connect() returned a {'sync' if is_async else 'async'} connection for the "
                f"{'async' if is_async else 'sync'} handler {func.__qualname__}."
            )
        versions = _versions(connection, namespace, table)
        versions.prepared = known["prepared"]
        return versions

    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def handle_async(*args: Any, **kwargs: Any) -> Any:
            delivery = read(args, kwargs)
            async with _opened_async(connect) as connection:
                versions = versions_on(connection, is_async=True)
                effect = functools.partial(func, connection, *args, **kwargs)
                result = await applied(versions, delivery, effect)
            known["prepared"] = versions.prepared
            return counted(counter, result)

        return handle_async

    @functools.wraps(func)
    def handle_sync(*args: Any, **kwargs: Any) -> Any:
        delivery = read(args, kwargs)
        with _opened(connect) as connection:
            versions = versions_on(connection, is_async=False)
            effect = functools.partial(func, connection, *args, **kwargs)
            result = applied(versions, delivery, effect)
        known["prepared"] = versions.prepared
        return counted(counter, result)

    return handle_sync


@contextlib.contextmanager
def _opened(connect: Callable[[], Any]) -> Iterator[Any]:
    """Yield the connection `connect()` makes; close it (or leave its context) afterwards."""
    made = connect()
    if _drivers().is_connection(made):
        with contextlib.closing(made):
            yield _checked(made)
    elif hasattr(made, "__enter__"):
        with made as connection:
            yield _checked(connection)
    else:
        yield _checked(made)


@contextlib.asynccontextmanager
async def _opened_async(connect: Callable[[], Any]) -> AsyncIterator[Any]:
    """Yield the connection `connect()` makes (or its coroutine); close it afterwards."""
    made = connect()
    if inspect.isawaitable(made):
        made = await made
    if _drivers().is_async_psycopg_connection(made):
        try:
            yield _checked(made)
        finally:
            with anyio.CancelScope(shield=True):
                await made.close()
    elif hasattr(made, "__aenter__"):
        async with made as connection:
            yield _checked(connection)
    else:
        yield _checked(made)


def _checked(connection: object) -> object:
    """Return `connection` if transactional mode can drive it."""
    if refuse_target(connection) is not None or not _drivers().is_connection(connection):
        raise ConfigurationError(
            f"connect() returned {type(connection).__name__}, not a connection versioned_message "
            "can drive: a sqlite3.Connection or a psycopg Connection or AsyncConnection."
        )
    return connection


@contextlib.contextmanager
def _closed_is_final(connection: Any) -> Iterator[None]:
    """Raise `ConnectionClosedError` for a delivery on a connection that is closed, or that
    closed while it ran (the error that closed it is its cause)."""
    closed = (
        f"The {type(connection).__name__} given to versioned_message is closed: no delivery "
        "can be applied on it again. Stop consuming (the process is to be restarted), or "
        "give versioned_message connect=pool.connection instead of a connection."
    )
    if getattr(connection, "closed", False):
        raise ConnectionClosedError(closed)
    try:
        yield
    except Exception as error:
        if getattr(connection, "closed", False):
            raise ConnectionClosedError(closed) from error
        raise


def _versions(connection: Any, namespace: str, table: str) -> Any:
    """Return the versions table's compare-and-set on `connection`."""
    from retrysafe.transactions._async.versions import AsyncSQLVersions  # noqa: PLC0415
    from retrysafe.transactions._sqlite_versions import SQLiteTransactions  # noqa: PLC0415
    from retrysafe.transactions._sync.versions import SQLVersions  # noqa: PLC0415

    if _drivers().is_async_psycopg_connection(connection):
        return AsyncSQLVersions(connection, namespace, table=table, mark="%s")
    if _drivers().is_sqlite_connection(connection):
        sqlite = SQLiteTransactions(connection)
        return SQLVersions(sqlite, namespace, table=table, mark="?", legacy=True)
    return SQLVersions(connection, namespace, table=table, mark="%s")


def _drivers() -> Any:
    """Return transactional mode's driver probes, imported on first use (store mode needs none)."""
    from retrysafe.transactions import _drivers as drivers  # noqa: PLC0415

    return drivers
