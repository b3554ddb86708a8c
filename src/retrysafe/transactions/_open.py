"""The public constructors of transactional mode, one per driver.

Each returns a `Transaction` or an `AsyncTransaction` by the colour of the connection it is
given; which backend drives a connection is decided in `_dispatch.py` (`sync_backend` and
`async_backend`, re-exported here for the web faces).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, TypeVar, overload

from retrysafe._clock import Clock
from retrysafe._record import Identity
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._core import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    AsyncTransaction,
    Transaction,
)
from retrysafe.transactions._dispatch import async_backend, sync_backend
from retrysafe.transactions._sqlite import SQLiteBackend

if TYPE_CHECKING:
    import psycopg as pg
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["async_backend", "psycopg", "sqlalchemy", "sqlite", "sync_backend"]

Row = TypeVar("Row")


def sqlite(
    connection: sqlite3.Connection,
    *,
    identity: Identity,
    fingerprint: str,
    table: str = DEFAULT_TABLE,
    lease: float = DEFAULT_LEASE,
    retention: float = DEFAULT_RETENTION,
    clock: Clock | None = None,
) -> Transaction:
    """Return a transaction on a `sqlite3` connection in which the key commits with the writes.

    Args:
        connection: the connection the business writes use. Outside a transaction the block
            runs in `BEGIN IMMEDIATE` ... `COMMIT`; inside one, in a savepoint that commits
            with it.
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table, the SQLite store's `table` option (default
            `retrysafe_records`); created if missing.
        lease: seconds a record committed in flight may wait for its holder.
        retention: seconds the outcome is kept and replayed after the commit.
        clock: the time source (default: the system clock).
    """
    return Transaction(
        SQLiteBackend(connection, table),
        identity=identity,
        fingerprint=fingerprint,
        lease=lease,
        retention=retention,
        clock=clock,
    )


@overload
def psycopg(
    connection: pg.Connection[Row],
    *,
    identity: Identity,
    fingerprint: str,
    table: str = ...,
    lease: float = ...,
    retention: float = ...,
    clock: Clock | None = ...,
) -> Transaction: ...


@overload
def psycopg(
    connection: pg.AsyncConnection[Row],
    *,
    identity: Identity,
    fingerprint: str,
    table: str = ...,
    lease: float = ...,
    retention: float = ...,
    clock: Clock | None = ...,
) -> AsyncTransaction: ...


def psycopg(
    connection: pg.Connection[Row] | pg.AsyncConnection[Row],
    *,
    identity: Identity,
    fingerprint: str,
    table: str = DEFAULT_TABLE,
    lease: float = DEFAULT_LEASE,
    retention: float = DEFAULT_RETENTION,
    clock: Clock | None = None,
) -> Transaction | AsyncTransaction:
    """Return a transaction on a psycopg 3 connection in which the key commits with the writes.

    A `Connection` gives a `Transaction` (`with`), an `AsyncConnection` an `AsyncTransaction`
    (`async with`). The block runs in `connection.transaction()`: a transaction committed when
    the block ends, or a savepoint when the connection already has a transaction open.

    Args:
        connection: the connection the business writes use (any row factory). Use the
            default READ COMMITTED isolation: under REPEATABLE READ or SERIALIZABLE, a
            duplicate that waited for the first transaction fails with a serialization error
            instead of replaying.
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table, the PostgreSQL store's `table` option (default
            `retrysafe_records`); created if missing.
        lease: seconds a record committed in flight may wait for its holder.
        retention: seconds the outcome is kept and replayed after the commit.
        clock: the time source (default: the system clock).
    """
    if not (
        drivers.is_psycopg_connection(connection) or drivers.is_async_psycopg_connection(connection)
    ):
        raise TypeError(f"Expected a psycopg Connection or AsyncConnection, not {connection!r}.")
    return _transaction(
        connection,
        table,
        identity=identity,
        fingerprint=fingerprint,
        lease=lease,
        retention=retention,
        clock=clock,
    )


@overload
def sqlalchemy(
    session: Session,
    *,
    identity: Identity,
    fingerprint: str,
    table: str = ...,
    lease: float = ...,
    retention: float = ...,
    clock: Clock | None = ...,
) -> Transaction: ...


@overload
def sqlalchemy(
    session: AsyncSession,
    *,
    identity: Identity,
    fingerprint: str,
    table: str = ...,
    lease: float = ...,
    retention: float = ...,
    clock: Clock | None = ...,
) -> AsyncTransaction: ...


def sqlalchemy(
    session: Session | AsyncSession,
    *,
    identity: Identity,
    fingerprint: str,
    table: str = DEFAULT_TABLE,
    lease: float = DEFAULT_LEASE,
    retention: float = DEFAULT_RETENTION,
    clock: Clock | None = None,
) -> Transaction | AsyncTransaction:
    """Return a transaction on a SQLAlchemy session in which the key commits with the writes.

    A `Session` gives a `Transaction` (`with`), an `AsyncSession` an `AsyncTransaction`
    (`async with`). The block runs in `session.begin()`, committed when the block ends, or in
    `session.begin_nested()` when the session already has a transaction open. Supported
    databases: SQLite through `sqlite3` (sync sessions) and PostgreSQL through psycopg 3
    (`postgresql+psycopg://`, both).

    Args:
        session: the session the business writes use; its pending objects are flushed
            before the outcome is stored.
        identity: the key's (namespace, scope, key).
        fingerprint: a digest of the request; the same key with another one is refused.
        table: the records table, the store's `table` option (default `retrysafe_records`).
        lease: seconds a record committed in flight may wait for its holder.
        retention: seconds the outcome is kept and replayed after the commit.
        clock: the time source (default: the system clock).
    """
    if not (drivers.is_session(session) or drivers.is_async_session(session)):
        raise TypeError(f"Expected a SQLAlchemy Session or AsyncSession, not {session!r}.")
    return _transaction(
        session,
        table,
        identity=identity,
        fingerprint=fingerprint,
        lease=lease,
        retention=retention,
        clock=clock,
    )


def _transaction(connection: object, table: str, **settings: Any) -> Transaction | AsyncTransaction:
    """Return the transaction of the connection's colour, on the backend of its driver."""
    if drivers.is_async_connection(connection):
        return AsyncTransaction(async_backend(connection, table), **settings)
    if drivers.is_sync_connection(connection):
        return Transaction(sync_backend(connection, table), **settings)
    raise TypeError(f"Expected a connection or session of a supported driver, not {connection!r}.")
