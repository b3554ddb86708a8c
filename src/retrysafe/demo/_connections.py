"""What a database backend hands the demo tables: connections, a closer, a transactional connect.

`retrysafe.demo._sqlite`, `retrysafe.demo._postgres` and `retrysafe.demo._mysql` open a
database and return `Connections`; `DemoDatabase` (`retrysafe.demo._tables`) puts the demo's
SQL on top of them. `pooled_transactions` is the transactional connect of a connection pool
(PostgreSQL's and MySQL's).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

import anyio
import anyio.to_thread

__all__ = [
    "LOCK_WAIT",
    "Connection",
    "Connections",
    "TransactionConnect",
    "as_is",
    "pooled_transactions",
]

LOCK_WAIT: Final = 30.0
"""Seconds a transactional request may wait for the database's write lock (SQLite's busy
timeout and the turn before it) or a row lock (PostgreSQL's `lock_timeout`, MySQL's
`innodb_lock_wait_timeout`)."""

TransactionConnect = Callable[[], Any]
"""Makes one request's connection for `TransactionalMiddleware(connect=...)`: an async context
manager of a sqlite3, psycopg or PyMySQL connection."""


class Connection(Protocol):
    """The part of a DB-API connection the demo uses (sqlite3 and psycopg both fit; a PyMySQL
    connection fits once `Connections.statements` wraps it)."""

    def execute(self, query: Any, params: Any = ...) -> Any:
        """Run one statement and return its cursor."""
        ...


def as_is(connection: Any) -> Connection:
    """Return a connection that has `execute` itself (sqlite3, psycopg) unchanged."""
    return cast(Connection, connection)


@dataclass(frozen=True, slots=True)
class Connections:
    """One open database for the demo tables.

    Attributes:
        connect: opens a connection context (a pooled PostgreSQL connection, or the one SQLite
            connection under a lock); the context commits on success and rolls back on error.
        close: releases the connections.
        description: where the database is, for people.
        transactions: makes the `connect` of transactional mode, one per app (None: payments
            cannot commit with their idempotency records in this database).
        statements: gives a driver's connection (a transactional request's) the `execute`
            the demo's SQL calls; `as_is` for drivers that have one.
    """

    connect: Callable[[], Any]
    close: Callable[[], None]
    description: str
    transactions: Callable[[], TransactionConnect] | None = None
    statements: Callable[[Any], Connection] = as_is


def pooled_transactions(
    size: int, getconn: Callable[[], Any], putconn: Callable[[Any], object]
) -> Callable[[], TransactionConnect]:
    """Return the `transactions` of a pool of `size` connections (`Connections.transactions`):
    each app's `connect` takes a request's connection with `getconn` and gives it back with
    `putconn`, both in a worker thread."""

    def transactions() -> TransactionConnect:
        # At most as many requests as the pool has connections wait for one, so the others
        # wait here, on the event loop, not in worker threads the connection holders need.
        slots = anyio.Semaphore(size)

        @asynccontextmanager
        async def connection() -> AsyncIterator[Any]:
            async with slots:
                conn = await anyio.to_thread.run_sync(getconn)
                try:
                    yield conn  # transactional mode begins, commits or rolls back on it
                finally:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(putconn, conn)

        return connection

    return transactions
