"""The public constructors of transactional mode, one per driver, and the backend dispatch."""

from __future__ import annotations

import sqlite3
import sys
from typing import TYPE_CHECKING, Any, TypeVar, overload

from retrysafe._clock import Clock
from retrysafe._record import Identity
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._core import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    AsyncBackend,
    AsyncTransaction,
    Backend,
    Transaction,
)
from retrysafe.transactions._sqlite import SQLiteBackend

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg as pg
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    SyncConnection: TypeAlias = sqlite3.Connection | pg.Connection[Any] | Session
    """A connection or session with a sync driver."""
    AsyncConnection: TypeAlias = pg.AsyncConnection[Any] | AsyncSession
    """A connection or session with an async driver."""

__all__ = ["async_backend", "psycopg", "sqlalchemy", "sqlite", "sync_backend"]

Row = TypeVar("Row")

_SYNC = "sqlite3.Connection, psycopg.Connection or sqlalchemy.orm.Session"
_ASYNC = "psycopg.AsyncConnection or sqlalchemy.ext.asyncio.AsyncSession"


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
    from retrysafe.transactions._psycopg import (  # noqa: PLC0415 - psycopg is optional
        AsyncPsycopgBackend,
        PsycopgBackend,
    )

    settings: dict[str, Any] = {
        "identity": identity,
        "fingerprint": fingerprint,
        "lease": lease,
        "retention": retention,
        "clock": clock,
    }
    import psycopg as driver  # noqa: PLC0415 - psycopg is optional

    if isinstance(connection, driver.AsyncConnection):
        return AsyncTransaction(AsyncPsycopgBackend(connection, table), **settings)
    if isinstance(connection, driver.Connection):
        return Transaction(PsycopgBackend(connection, table), **settings)
    raise TypeError(f"Expected a psycopg Connection or AsyncConnection, not {connection!r}.")


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
    from sqlalchemy.ext.asyncio import AsyncSession  # noqa: PLC0415 - SQLAlchemy is optional

    from retrysafe.transactions._sqlalchemy import (  # noqa: PLC0415
        AsyncSessionBackend,
        SessionBackend,
    )

    settings: dict[str, Any] = {
        "identity": identity,
        "fingerprint": fingerprint,
        "lease": lease,
        "retention": retention,
        "clock": clock,
    }
    if isinstance(session, AsyncSession):
        return AsyncTransaction(AsyncSessionBackend(session, table), **settings)
    return Transaction(SessionBackend(_session(session), table), **settings)


def _session(value: object) -> Session:
    from sqlalchemy.orm import Session  # noqa: PLC0415 - SQLAlchemy is optional

    if not isinstance(value, Session):
        raise TypeError(f"Expected a SQLAlchemy Session or AsyncSession, not {value!r}.")
    return value


def sync_backend(connection: SyncConnection, table: str) -> Backend:
    """Return the backend for a sync connection or session."""
    if isinstance(connection, sqlite3.Connection):
        return SQLiteBackend(connection, table)
    # A driver the caller uses is imported already; one it does not use is never imported.
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.Connection):
        from retrysafe.transactions._psycopg import PsycopgBackend  # noqa: PLC0415

        return PsycopgBackend(connection, table)
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is not None and isinstance(connection, orm.Session):
        from retrysafe.transactions._sqlalchemy import SessionBackend  # noqa: PLC0415

        return SessionBackend(connection, table)
    raise TypeError(f"Expected a {_SYNC}, not {connection!r}.")


def async_backend(connection: AsyncConnection, table: str) -> AsyncBackend:
    """Return the backend for an async connection or session."""
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.AsyncConnection):
        from retrysafe.transactions._psycopg import AsyncPsycopgBackend  # noqa: PLC0415

        return AsyncPsycopgBackend(connection, table)
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None and isinstance(connection, asyncio_ext.AsyncSession):
        from retrysafe.transactions._sqlalchemy import AsyncSessionBackend  # noqa: PLC0415

        return AsyncSessionBackend(connection, table)
    raise TypeError(f"Expected a {_ASYNC}, not {connection!r}.")
