"""The public constructors of transactional mode, one per driver.

Each returns a `Transaction` or an `AsyncTransaction` by the colour of the connection it is
given; which backend drives a connection is decided in `_dispatch.py` (`sync_backend` and
`async_backend`, re-exported here). Their keyword arguments are the claim's (`ClaimOptions`,
`_state.py`) and the records `table`.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, TypeVar, Unpack, cast, overload

from retrysafe._encryption import Keyring
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._async.encrypted import encrypting as aencrypting
from retrysafe.transactions._core import AsyncTransaction, ClaimOptions, Transaction
from retrysafe.transactions._dispatch import async_backend, sync_backend
from retrysafe.transactions._sqlite import SQLiteBackend
from retrysafe.transactions._sync.encrypted import encrypting

if TYPE_CHECKING:
    import psycopg as pg
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
    from sqlalchemy.orm import Session, scoped_session

    from retrysafe.transactions._drivers import AsyncMySQLConnection, MySQLConnection

__all__ = ["async_backend", "mysql", "psycopg", "sqlalchemy", "sqlite", "sync_backend"]

Row = TypeVar("Row")


class OpenOptions(ClaimOptions, total=False):
    """The keyword arguments of `psycopg` and `sqlalchemy`: the claim's, and `encryption`."""

    encryption: Keyring | None
    """The keys that encrypt the outcome at rest (docs/encryption.md); default none."""


def sqlite(
    connection: sqlite3.Connection,
    *,
    table: str = DEFAULT_TABLE,
    encryption: Keyring | None = None,
    **options: Unpack[ClaimOptions],
) -> Transaction:
    """Return a transaction on a `sqlite3` connection in which the key commits with the writes.

    Args:
        connection: the connection the business writes use. Outside a transaction the block
            runs in `BEGIN IMMEDIATE` ... `COMMIT`; inside one, in a savepoint that commits
            with it.
        table: the records table, the SQLite store's `table` option (default
            `retrysafe_records`); created if missing.
        encryption: the keys that encrypt the outcome at rest, those of the store that
            shares the table (docs/encryption.md); default none.
        options: the claim: `identity` (the key's namespace, scope and key) and `fingerprint`
            (a digest of the request: the same key with another one is refused), and
            optionally `lease` (seconds a record committed in flight may wait for its holder),
            `retention` (seconds the outcome is replayed after the commit) and `clock`.
    """
    return Transaction(encrypting(SQLiteBackend(connection, table), encryption), **options)


@overload
def psycopg(
    connection: pg.Connection[Row], *, table: str = ..., **options: Unpack[OpenOptions]
) -> Transaction: ...
@overload
def psycopg(
    connection: pg.AsyncConnection[Row], *, table: str = ..., **options: Unpack[OpenOptions]
) -> AsyncTransaction: ...
def psycopg(
    connection: pg.Connection[Row] | pg.AsyncConnection[Row],
    *,
    table: str = DEFAULT_TABLE,
    **options: Unpack[OpenOptions],
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
        table: the records table, the PostgreSQL store's `table` option (default
            `retrysafe_records`); created if missing.
        encryption: the keys that encrypt the outcome at rest, as for `sqlite`.
        options: the claim's `identity`, `fingerprint`, `lease`, `retention` and `clock`, as
            for `sqlite`.
    """
    if not (
        drivers.is_psycopg_connection(connection) or drivers.is_async_psycopg_connection(connection)
    ):
        raise TypeError(f"Expected a psycopg Connection or AsyncConnection, not {connection!r}.")
    return _transaction(connection, table, options)


@overload
def mysql(
    connection: MySQLConnection, *, table: str = ..., **options: Unpack[OpenOptions]
) -> Transaction: ...
@overload
def mysql(
    connection: AsyncMySQLConnection, *, table: str = ..., **options: Unpack[OpenOptions]
) -> AsyncTransaction: ...
def mysql(
    connection: MySQLConnection | AsyncMySQLConnection,
    *,
    table: str = DEFAULT_TABLE,
    **options: Unpack[OpenOptions],
) -> Transaction | AsyncTransaction:
    """Return a transaction on a MySQL or MariaDB connection in which the key commits with the
    writes.

    A PyMySQL `Connection` gives a `Transaction` (`with`), an aiomysql `Connection` an
    `AsyncTransaction` (`async with`). The block runs in `START TRANSACTION` ... `COMMIT`, or
    in a savepoint when the connection already has a transaction open (autocommit off, and a
    statement ran since the last commit); InnoDB tables only.

    Args:
        connection: the connection the business writes use (any cursor class), at REPEATABLE
            READ (InnoDB's default) or READ COMMITTED: the record is read with locking reads,
            which see the latest committed row at either level. A duplicate waits on the key's
            row lock while the first transaction runs, up to `innodb_lock_wait_timeout` (then
            `InFlightError`).
        table: the records table, the MySQL store's `table` option (default
            `retrysafe_records`); created if missing, before the transaction begins (MySQL
            commits a transaction on `CREATE TABLE`, so inside an open one a missing table is
            a `ConfigurationError`).
        encryption: the keys that encrypt the outcome at rest, as for `sqlite`.
        options: the claim's `identity`, `fingerprint`, `lease`, `retention` and `clock`, as
            for `sqlite`.
    """
    if not (
        drivers.is_mysql_connection(connection) or drivers.is_async_mysql_connection(connection)
    ):
        raise TypeError(
            f"Expected a PyMySQL or aiomysql Connection (MySQL, MariaDB), not {connection!r}."
        )
    return _transaction(connection, table, options)


@overload
def sqlalchemy(
    session: Session | scoped_session[Session],
    *,
    table: str = ...,
    **options: Unpack[OpenOptions],
) -> Transaction: ...
@overload
def sqlalchemy(
    session: AsyncSession | async_scoped_session[AsyncSession],
    *,
    table: str = ...,
    **options: Unpack[OpenOptions],
) -> AsyncTransaction: ...
def sqlalchemy(
    session: Session | AsyncSession | scoped_session[Session] | async_scoped_session[AsyncSession],
    *,
    table: str = DEFAULT_TABLE,
    **options: Unpack[OpenOptions],
) -> Transaction | AsyncTransaction:
    """Return a transaction on a SQLAlchemy session in which the key commits with the writes.

    A `Session` gives a `Transaction` (`with`), an `AsyncSession` an `AsyncTransaction`
    (`async with`). The block runs in `session.begin()`, committed when the block ends, or in
    `session.begin_nested()` when the session already has a transaction open. Supported
    databases: SQLite through `sqlite3` (sync sessions), PostgreSQL through psycopg 3
    (`postgresql+psycopg://`, both), and MySQL or MariaDB through PyMySQL
    (`mysql+pymysql://`, sync) or aiomysql (`mysql+aiomysql://`, async).

    Args:
        session: the session the business writes use; its pending objects are flushed
            before the outcome is stored. A `scoped_session` (Flask-SQLAlchemy's `db.session`)
            or an `async_scoped_session` stands for its current session.
        table: the records table, the store's `table` option (default `retrysafe_records`).
        encryption: the keys that encrypt the outcome at rest, as for `sqlite`.
        options: the claim's `identity`, `fingerprint`, `lease`, `retention` and `clock`, as
            for `sqlite`.
    """
    current = drivers.unscoped(session)
    if not (drivers.is_session(current) or drivers.is_async_session(current)):
        raise TypeError(f"Expected a SQLAlchemy Session or AsyncSession, not {session!r}.")
    return _transaction(current, table, options)


def _transaction(
    connection: object, table: str, options: OpenOptions
) -> Transaction | AsyncTransaction:
    """Return the transaction of the connection's colour, on the backend of its driver (behind
    encryption when keys are given)."""
    encryption = options.pop("encryption", None)
    claim = cast("ClaimOptions", options)
    if drivers.is_async_connection(connection):
        return AsyncTransaction(aencrypting(async_backend(connection, table), encryption), **claim)
    if drivers.is_sync_connection(connection):
        sync = encrypting(sync_backend(connection, table), encryption)
        return Transaction(sync, **claim)
    raise TypeError(f"Expected a connection or session of a supported driver, not {connection!r}.")
