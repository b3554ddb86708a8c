"""Which class drives a given connection: backends, records and write executors, by driver.

The sync and async code (`_async/`, and `_sync/` generated from it) asks here, by colour:
`sync_backend` / `async_backend` for a transaction's backend, `sync_executor` / `async_executor`
for the write helpers, `sync_records` / `async_records` for the record statements on a
session's driver connection (those of that connection's own backend). Drivers are recognised
by `_drivers` (without importing any), and the module for a driver is imported only when one of
its connections shows up, so a user of `sqlite3` alone never loads psycopg, PyMySQL or SQLAlchemy.

| driver                         | backend (its records too) | write executor     |
|--------------------------------|---------------------------|--------------------|
| `sqlite3`                      | `SQLiteBackend`           | `SQLiteExecutor`   |
| psycopg (sync, async)          | `PsycopgBackend`          | `PsycopgExecutor`  |
| PyMySQL; aiomysql              | `MySQLBackend`            | `MySQLExecutor`    |
| a SQLAlchemy session           | `SessionBackend`          | `SessionExecutor`  |

A session's backend runs the records of its driver connection's backend (`sync_records`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe._errors import ConfigurationError
from retrysafe.transactions import _drivers as drivers

if TYPE_CHECKING:
    from retrysafe.transactions._async.executors import AsyncExecutor
    from retrysafe.transactions._async.mysql import AsyncMySQLBackend
    from retrysafe.transactions._async.psycopg import AsyncPsycopgBackend
    from retrysafe.transactions._async.transaction import AsyncBackend, AsyncRecords
    from retrysafe.transactions._drivers import AsyncConnection, Connection
    from retrysafe.transactions._sqlite import SQLiteBackend
    from retrysafe.transactions._sync.executors import Executor
    from retrysafe.transactions._sync.mysql import MySQLBackend
    from retrysafe.transactions._sync.psycopg import PsycopgBackend
    from retrysafe.transactions._sync.transaction import Backend, Records

# The lazy imports below load a driver's module only for a connection of that driver.
# ruff: noqa: PLC0415

__all__ = [
    "async_backend",
    "async_executor",
    "async_records",
    "sync_backend",
    "sync_executor",
    "sync_records",
]

_SYNC = (
    "sqlite3.Connection, psycopg.Connection, pymysql.Connection (MySQL, MariaDB) "
    "or sqlalchemy.orm.Session"
)
_ASYNC = (
    "psycopg.AsyncConnection, aiomysql.Connection (MySQL, MariaDB) "
    "or sqlalchemy.ext.asyncio.AsyncSession"
)
_SESSIONS = (
    "sqlite (the standard sqlite3 driver), postgresql+psycopg (psycopg 3) "
    "or mysql+pymysql (MySQL, MariaDB)"
)
_ASYNC_SESSIONS = "postgresql+psycopg (psycopg 3) or mysql+aiomysql (MySQL, MariaDB)"


def sync_backend(connection: Connection, table: str) -> Backend:
    """Return the backend for a sync connection or session."""
    if drivers.is_session(connection):
        from retrysafe.transactions._sync.sqlalchemy import SessionBackend

        return SessionBackend(connection, table)
    return _sync_driver_backend(connection, table)


def async_backend(connection: AsyncConnection, table: str) -> AsyncBackend:
    """Return the backend for an async connection or session."""
    if drivers.is_async_session(connection):
        from retrysafe.transactions._async.sqlalchemy import AsyncSessionBackend

        return AsyncSessionBackend(connection, table)
    return _async_driver_backend(connection, table)


def sync_executor(connection: object) -> Executor:
    """Return the write helpers' executor for a sync connection or session."""
    if drivers.is_sqlite_connection(connection):
        from retrysafe.transactions._sqlite import SQLiteExecutor

        return SQLiteExecutor(connection)
    if drivers.is_psycopg_connection(connection):
        from retrysafe.transactions._sync.executors import PsycopgExecutor

        return PsycopgExecutor(connection)
    if drivers.is_mysql_connection(connection):
        from retrysafe.transactions._sync.mysql import MySQLExecutor

        return MySQLExecutor(connection)
    if drivers.is_session(connection):
        from retrysafe.transactions._sync.executors import SessionExecutor

        return SessionExecutor(connection)
    raise TypeError(f"Expected a {_SYNC}, not {connection!r}.")


def async_executor(connection: object) -> AsyncExecutor:
    """Return the write helpers' executor for an async connection or session."""
    if drivers.is_async_psycopg_connection(connection):
        from retrysafe.transactions._async.executors import AsyncPsycopgExecutor

        return AsyncPsycopgExecutor(connection)
    if drivers.is_async_mysql_connection(connection):
        from retrysafe.transactions._async.mysql import AsyncMySQLExecutor

        return AsyncMySQLExecutor(connection)
    if drivers.is_async_session(connection):
        from retrysafe.transactions._async.executors import AsyncSessionExecutor

        return AsyncSessionExecutor(connection)
    raise TypeError(f"Expected a {_ASYNC}, not {connection!r}.")


def sync_records(driver_connection: object, table: str) -> Records:
    """Return the record statements for a sync session's driver connection: its backend's."""
    if not (
        drivers.is_sqlite_connection(driver_connection)
        or drivers.is_psycopg_connection(driver_connection)
        or drivers.is_mysql_connection(driver_connection)
    ):
        raise ConfigurationError(
            f"Transactional mode supports sessions on {_SESSIONS}, "
            f"not a {type(driver_connection).__module__} connection."
        )
    return _sync_driver_backend(driver_connection, table)


def async_records(driver_connection: object, table: str) -> AsyncRecords:
    """Return the record statements for an async session's driver connection: its backend's."""
    if not (
        drivers.is_async_psycopg_connection(driver_connection)
        or drivers.is_async_mysql_connection(driver_connection)
    ):
        raise ConfigurationError(
            f"Transactional mode on an AsyncSession supports {_ASYNC_SESSIONS}, "
            f"not a {type(driver_connection).__module__} connection."
        )
    return _async_driver_backend(driver_connection, table)


def _sync_driver_backend(
    connection: object, table: str
) -> SQLiteBackend | PsycopgBackend | MySQLBackend:
    """Return the backend of a sync driver's own connection: its records, and transactions."""
    if drivers.is_sqlite_connection(connection):
        from retrysafe.transactions._sqlite import SQLiteBackend

        return SQLiteBackend(connection, table)
    if drivers.is_psycopg_connection(connection):
        from retrysafe.transactions._sync.psycopg import PsycopgBackend

        return PsycopgBackend(connection, table)
    if drivers.is_mysql_connection(connection):
        from retrysafe.transactions._sync.mysql import MySQLBackend

        return MySQLBackend(connection, table)
    raise TypeError(f"Expected a {_SYNC}, not {connection!r}.")


def _async_driver_backend(
    connection: object, table: str
) -> AsyncPsycopgBackend | AsyncMySQLBackend:
    """Return the backend of an async driver's own connection: its records, and transactions."""
    if drivers.is_async_psycopg_connection(connection):
        from retrysafe.transactions._async.psycopg import AsyncPsycopgBackend

        return AsyncPsycopgBackend(connection, table)
    if drivers.is_async_mysql_connection(connection):
        from retrysafe.transactions._async.mysql import AsyncMySQLBackend

        return AsyncMySQLBackend(connection, table)
    raise TypeError(f"Expected a {_ASYNC}, not {connection!r}.")
