"""What a database backend hands the demo tables: connections, a closer, a transactional connect.

`retrysafe.demo._sqlite` and `retrysafe.demo._postgres` open a database and return
`Connections`; `DemoDatabase` (`retrysafe.demo._tables`) puts the demo's SQL on top of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = ["LOCK_WAIT", "Connection", "Connections", "TransactionConnect"]

LOCK_WAIT: Final = 30.0
"""Seconds a transactional request may wait for the database's write lock (SQLite's busy
timeout and the turn before it) or a row lock (PostgreSQL's `lock_timeout`)."""

TransactionConnect = Callable[[], Any]
"""Makes one request's connection for `TransactionalMiddleware(connect=...)`: an async context
manager of a sqlite3 or psycopg connection."""


class Connection(Protocol):
    """The part of a DB-API connection the demo uses (sqlite3 and psycopg both fit)."""

    def execute(self, query: Any, params: Any = ...) -> Any:
        """Run one statement and return its cursor."""
        ...


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
    """

    connect: Callable[[], Any]
    close: Callable[[], None]
    description: str
    transactions: Callable[[], TransactionConnect] | None = None
