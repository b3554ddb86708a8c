"""Which database driver a connection belongs to: the one place transactional mode asks.

A connection of a driver is an instance of that driver's classes, so the driver is imported
already when such an object exists. Every probe here therefore looks the driver up in
`sys.modules` and never imports one: a user of `sqlite3` alone never loads psycopg, PyMySQL or
SQLAlchemy (`import retrysafe.transactions` loads none of them), and a driver that is not
installed simply matches nothing.

| probe                          | matches                                  |
|--------------------------------|------------------------------------------|
| `is_sqlite_connection`         | `sqlite3.Connection`                     |
| `is_psycopg_connection`        | `psycopg.Connection`                     |
| `is_async_psycopg_connection`  | `psycopg.AsyncConnection`                |
| `is_mysql_connection`          | `pymysql.Connection`                     |
| `is_async_mysql_connection`    | `aiomysql.Connection`                    |
| `is_session`                   | `sqlalchemy.orm.Session`                 |
| `is_async_session`             | `sqlalchemy.ext.asyncio.AsyncSession`    |

aiomysql is built on PyMySQL (it imports it), but its connection is a class of its own, so the
two probes never both match. Django's MySQL backend connects through `MySQLdb`: with PyMySQL
installed as it (`pymysql.install_as_MySQLdb()`), its connections are PyMySQL's; mysqlclient's
are not recognised (the MySQL store's statements are PyMySQL's).

`is_sync_connection` and `is_async_connection` tell which colour of transaction a connection
takes; `is_connection` whether transactional mode drives it at all; `commits_on_ddl` whether its
database commits the open transaction on `CREATE TABLE` (MySQL and MariaDB do);
`transaction_aborted` whether its database aborted the open transaction (PostgreSQL does, after
a statement fails).
"""

from __future__ import annotations

import sqlite3
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = [
    "AsyncMySQLConnection",
    "MySQLConnection",
    "commits_on_ddl",
    "is_async_connection",
    "is_async_mysql_connection",
    "is_async_psycopg_connection",
    "is_async_session",
    "is_connection",
    "is_mysql_connection",
    "is_psycopg_connection",
    "is_session",
    "is_sqlite_connection",
    "is_sync_connection",
    "psycopg_module",
    "sqlalchemy_module",
    "transaction_aborted",
]


class MySQLConnection(Protocol):
    """A PyMySQL connection, as far as its type shows: PyMySQL ships no types."""

    def cursor(self) -> Any:
        """Return a new cursor."""
        ...

    def begin(self) -> None:
        """Start a transaction."""
        ...

    def commit(self) -> None:
        """Commit the open transaction."""
        ...

    def rollback(self) -> None:
        """Roll back the open transaction."""
        ...


class AsyncMySQLConnection(Protocol):
    """An aiomysql connection, as far as its type shows: aiomysql ships no types."""

    def cursor(self) -> Any:
        """Return a new cursor (awaitable, and an async context manager)."""
        ...

    async def begin(self) -> None:
        """Start a transaction."""
        ...

    async def commit(self) -> None:
        """Commit the open transaction."""
        ...

    async def rollback(self) -> None:
        """Roll back the open transaction."""
        ...

    async def ensure_closed(self) -> None:
        """Say goodbye to the server and close the connection."""
        ...


if TYPE_CHECKING:
    Connection: TypeAlias = sqlite3.Connection | psycopg.Connection[Any] | MySQLConnection | Session
    """A connection or session of a sync driver that transactional mode drives."""
    AsyncConnection: TypeAlias = psycopg.AsyncConnection[Any] | AsyncMySQLConnection | AsyncSession
    """A connection or session of an async driver that transactional mode drives."""


def psycopg_module() -> ModuleType | None:
    """Return psycopg if this process uses it (has imported it), else None."""
    return sys.modules.get("psycopg")


def sqlalchemy_module(name: str) -> ModuleType | None:
    """Return `sqlalchemy.<name>` (`orm`, `ext.asyncio`) if this process uses it, else None."""
    return sys.modules.get(f"sqlalchemy.{name}")


def is_sqlite_connection(value: object) -> TypeGuard[sqlite3.Connection]:
    """Return whether `value` is a `sqlite3.Connection` (sqlite3 is in the standard library)."""
    return isinstance(value, sqlite3.Connection)


def is_psycopg_connection(value: object) -> TypeGuard[psycopg.Connection[Any]]:
    """Return whether `value` is a psycopg (sync) `Connection`."""
    driver = psycopg_module()
    return driver is not None and isinstance(value, driver.Connection)


def is_async_psycopg_connection(value: object) -> TypeGuard[psycopg.AsyncConnection[Any]]:
    """Return whether `value` is a psycopg `AsyncConnection`."""
    driver = psycopg_module()
    return driver is not None and isinstance(value, driver.AsyncConnection)


def is_mysql_connection(value: object) -> TypeGuard[MySQLConnection]:
    """Return whether `value` is a PyMySQL `Connection` (also when installed as `MySQLdb`)."""
    driver = sys.modules.get("pymysql")
    return driver is not None and isinstance(value, driver.Connection)


def is_async_mysql_connection(value: object) -> TypeGuard[AsyncMySQLConnection]:
    """Return whether `value` is an aiomysql `Connection`."""
    driver = sys.modules.get("aiomysql")
    return driver is not None and isinstance(value, driver.Connection)


def is_session(value: object) -> TypeGuard[Session]:
    """Return whether `value` is a SQLAlchemy `Session`."""
    orm = sqlalchemy_module("orm")
    return orm is not None and isinstance(value, orm.Session)


def is_async_session(value: object) -> TypeGuard[AsyncSession]:
    """Return whether `value` is a SQLAlchemy `AsyncSession`."""
    asyncio_ext = sqlalchemy_module("ext.asyncio")
    return asyncio_ext is not None and isinstance(value, asyncio_ext.AsyncSession)


def unscoped(value: object) -> object:
    """Return the session a SQLAlchemy `scoped_session` or `async_scoped_session` (such as
    Flask-SQLAlchemy's `db.session`) stands for in this thread or task; else `value`."""
    orm, asyncio_ext = sqlalchemy_module("orm"), sqlalchemy_module("ext.asyncio")
    if orm is not None and isinstance(value, orm.scoped_session):
        return value()
    if asyncio_ext is not None and isinstance(value, asyncio_ext.async_scoped_session):
        return value()
    return value


def session_of_its_own(value: object) -> Session | AsyncSession | None:
    """Return a new session on the engine of `value`, a SQLAlchemy session with a transaction
    open (a scoped session a hook already used), else None: for what must commit by itself,
    as the scope secret must, whatever becomes of the caller's transaction."""
    if is_session(value) and value.in_transaction():
        orm = sqlalchemy_module("orm")
        assert orm is not None  # noqa: S101 - is_session found it
        session: Session = orm.Session(bind=value.get_bind())
        return session
    if is_async_session(value) and value.in_transaction() and value.bind is not None:
        asyncio_ext = sqlalchemy_module("ext.asyncio")
        assert asyncio_ext is not None  # noqa: S101 - is_async_session found it
        async_session: AsyncSession = asyncio_ext.AsyncSession(bind=value.bind)
        return async_session
    return None


def is_sync_connection(value: object) -> TypeGuard[Connection]:
    """Return whether `value` is a connection or session of a sync driver we drive."""
    return (
        is_sqlite_connection(value)
        or is_psycopg_connection(value)
        or is_mysql_connection(value)
        or is_session(value)
    )


def is_async_connection(value: object) -> TypeGuard[AsyncConnection]:
    """Return whether `value` is a connection or session of an async driver we drive."""
    return (
        is_async_psycopg_connection(value)
        or is_async_mysql_connection(value)
        or is_async_session(value)
    )


def is_connection(value: object) -> bool:
    """Return whether `value` is a connection or session we drive, of either colour."""
    return is_sync_connection(value) or is_async_connection(value)


def commits_on_ddl(value: object) -> bool:
    """Return whether `value` is a driver connection whose database commits the open
    transaction on `CREATE TABLE` (MySQL and MariaDB, either colour)."""
    return is_mysql_connection(value) or is_async_mysql_connection(value)


def transaction_aborted(connection: object) -> bool:
    """Return whether the database aborted the transaction open on driver `connection`.

    PostgreSQL aborts a transaction as soon as one of its statements fails: every later
    statement is refused until it is rolled back, and a COMMIT then rolls it back without an
    error, so code that caught the error and went on would have nothing of it applied, and be
    told nothing. A psycopg connection says so (`INERROR`). MySQL, MariaDB and SQLite fail only
    the statement: the transaction goes on, and can commit what else it wrote.
    """
    if not (is_psycopg_connection(connection) or is_async_psycopg_connection(connection)):
        return False
    driver = psycopg_module()
    assert driver is not None  # noqa: S101 - the probe found it
    return bool(connection.info.transaction_status == driver.pq.TransactionStatus.INERROR)
