"""The demo tables on MySQL or MariaDB: a pool of the MySQL store's connections, shared with
transactional writes.

The connections are the sync MySQL store's (`stores/_sync/mysql_pool.py`: PyMySQL, autocommit,
READ COMMITTED, strict SQL mode), so the demo's tables and the store's records are reached the
same way; the demo's pool is its own (8 connections), with `innodb_lock_wait_timeout` at
`LOCK_WAIT`, so a duplicate waits that long for the first request's commit. PyMySQL's
connections run SQL through cursors, so `statements` gives them the `execute` the demo's SQL
calls (sqlite3's and psycopg's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from retrysafe._errors import ConfigurationError, StoreUnavailableError
from retrysafe._extras import missing_extra
from retrysafe.demo._connections import LOCK_WAIT, Connections, pooled_transactions
from retrysafe.stores import backend_url

__all__ = ["open_mysql"]

_POOL_SIZE: Final = 8
_IN_TRANSACTION: Final = 1  # SERVER_STATUS_IN_TRANS: the server has a transaction open


def open_mysql(url: str) -> Connections:
    """Open a connection pool to the MySQL or MariaDB database of the store at `url`.

    Raises:
        ConfigurationError: the `mysql` extra is missing, or the URL is invalid.
        StoreUnavailableError: the database cannot be reached.
    """
    try:
        import pymysql  # type: ignore[import-untyped]  # noqa: PLC0415 -- an optional extra

        from retrysafe.stores._sql.mysql_connection import parse_url  # noqa: PLC0415
        from retrysafe.stores._sync.mysql_pool import MySQLPool  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - the extra is part of the test set-up
        raise ConfigurationError(str(missing_extra("The MySQL demo", "mysql", error))) from error
    options = dataclasses.replace(
        parse_url(backend_url(url)), pool_max=_POOL_SIZE, lock_timeout=int(LOCK_WAIT)
    )
    pool = MySQLPool(options)
    try:
        # Connect once up front, so a wrong host or database is one clear error at start-up.
        conn = pool.getconn()
        server = str(conn.get_server_info())
        pool.putconn(conn, reusable=True)
    except pymysql.MySQLError as error:
        pool.close()
        raise StoreUnavailableError(f"Cannot reach MySQL: {error}") from error

    def give_back(conn: Any, *, committed: bool = False) -> None:
        pool.putconn(conn, reusable=committed or _settled(conn))

    @contextmanager
    def connect() -> Iterator[_Statements]:
        conn = pool.getconn()
        committed = False
        try:
            conn.begin()
            yield _Statements(conn)
            conn.commit()
            committed = True
        finally:
            give_back(conn, committed=committed)

    flavour = "MariaDB" if "mariadb" in server.lower() else "MySQL"
    return Connections(
        connect,
        pool.close,
        description=f"{flavour} on {options.host}",
        transactions=pooled_transactions(_POOL_SIZE, pool.getconn, give_back),
        statements=_Statements,
    )


class _Statements:
    """A PyMySQL connection with the `execute` of sqlite3 and psycopg: one statement, its
    cursor returned (PyMySQL's default cursor holds every row, so the caller fetches at will).
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, query: str, params: Sequence[object] | None = None) -> Any:
        """Run one statement with `%s` placeholders and return its cursor."""
        cursor = self._conn.cursor()
        cursor.execute(query, tuple(params) if params else None)
        return cursor


def _settled(conn: Any) -> bool:
    """Roll back what a failed request (or transactional mode's error path) left open on
    `conn`; return whether it is reusable."""
    if not conn.open:
        return False
    if conn.server_status & _IN_TRANSACTION:
        try:
            conn.rollback()
        except Exception:  # a broken connection is closed, not reused
            return False
    return True
