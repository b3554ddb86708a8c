"""A `sqlite3` connection with psycopg's `transaction()`, for versioned consumers (sync only).

`SQLVersions` opens a transaction, runs the version's compare-and-set and then the effect on
the caller's connection. On `sqlite3` the transaction is `SQLiteBackend`'s: `BEGIN IMMEDIATE`
outside a transaction (so concurrent consumers queue on the write lock rather than fail an
upgrade from a read lock), a savepoint inside one the caller opened, which then commits with it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence

from retrysafe.transactions._sqlite import SQLiteBackend

__all__ = ["SQLiteTransactions"]


class _Transactions(SQLiteBackend):
    """`SQLiteBackend`'s transaction control, without the records table it prepares."""

    def prepare(self) -> None:
        """Nothing to prepare: the versions table is created by `SQLVersions`."""


class SQLiteTransactions:
    """`transaction()` and `execute()` on a `sqlite3` connection, as psycopg has them.

    Args:
        connection: the caller's connection, which the effect writes with.
    """

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self._backend = _Transactions(connection)

    def execute(self, query: str, params: Sequence[object] = ()) -> sqlite3.Cursor:
        """Run one statement on the connection."""
        return self.connection.execute(query, tuple(params))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Open a transaction (or a savepoint); commit it on exit, roll it back on an error."""
        self._backend.begin()
        try:
            yield
        except BaseException:
            self._backend.end(commit=False)
            raise
        self._backend.end(commit=True)
