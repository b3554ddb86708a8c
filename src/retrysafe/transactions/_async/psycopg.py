"""Transactional mode on a psycopg 3 connection, with the PostgreSQL store's own primitives.

The record statements are the store's (`stores/_async/postgres_records.py`), run on the
caller's connection (what they share with MySQL's is in `sql_backend.py`). The claim is the
store's upsert: inside the caller's transaction it inserts the record uncommitted, so a
duplicate's claim waits on the key's unique index until the first transaction ends: after a
commit it finds the finished record (and replays), after a rollback it inserts its own.
`ON CONFLICT DO UPDATE` locks the existing row even when its condition is false, so the record
cannot change under the transaction that found it; the claim reads it under that lock
(`locked=True`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from retrysafe._record import Claim, Identity
from retrysafe.stores._async.postgres_records import AsyncPostgresRecords
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres import record_table
from retrysafe.stores._sql.postgres_connection import store_error
from retrysafe.transactions._async.sql_backend import (
    AsyncDriverBackend,
    AsyncDriverRecords,
    commit_failed,
)

__all__ = ["AsyncPsycopgBackend", "AsyncPsycopgRecords"]


class AsyncPsycopgRecords(
    AsyncDriverRecords[psycopg.AsyncConnection[Any], AsyncPostgresRecords, psycopg.Error]
):
    """The store's record statements on a psycopg connection inside a transaction.

    Args:
        connection: the caller's connection (any row factory).
        table: the records table (the PostgreSQL store's `table` option).
    """

    driver_error = psycopg.Error

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], table: str = DEFAULT_TABLE
    ) -> None:
        super().__init__(connection, AsyncPostgresRecords(record_table(table)))

    def _translate(self, error: psycopg.Error) -> Exception:
        """Return our error for a driver error: the store's."""
        return store_error(error)

    def _lock_wait_timed_out(self, error: psycopg.Error) -> bool:
        """Return whether `lock_timeout` ended a wait on a row lock."""
        return isinstance(error, psycopg.errors.LockNotAvailable)

    def _table_missing(self, error: psycopg.Error) -> bool:
        """Return whether `error` is SQLSTATE 42P01 (undefined table)."""
        return isinstance(error, psycopg.errors.UndefinedTable)

    async def _found_committed(self) -> bool:
        """Return whether the open transaction has written nothing yet (it has no transaction
        id): then it did not create the table it found, which is therefore committed.

        `txid_current_if_assigned`: PostgreSQL 10 to 12 lack its newer name,
        `pg_current_xact_id_if_assigned`.
        """
        async with self.connection.cursor(row_factory=tuple_row) as cursor:
            await cursor.execute("SELECT txid_current_if_assigned() IS NULL")
            row = await cursor.fetchone()
        return row is not None and bool(row[0])

    async def _store_claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim at `now`, reading the record again under the row lock."""
        return await self._records.claim(
            self.connection,
            identity,
            fingerprint,
            now=lambda: now,
            lease=lease,
            retention=retention,
            locked=True,
        )

    def _address(self) -> tuple[str, ...]:
        """Return the connection's host, port and database."""
        info = self.connection.info
        return (info.host, str(info.port), info.dbname)


class AsyncPsycopgBackend(AsyncPsycopgRecords, AsyncDriverBackend):
    """Transaction control on a psycopg connection (`connection.transaction()`).

    Outside a transaction it opens one and commits it; inside one (a connection not in
    autocommit that already ran a statement), a savepoint that commits with the caller's
    transaction.
    """

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], table: str = DEFAULT_TABLE
    ) -> None:
        super().__init__(connection, table)
        self._transaction: tuple[contextlib.AsyncExitStack, psycopg.AsyncTransaction] | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open."""
        return self.connection.info.transaction_status != TransactionStatus.IDLE

    async def begin(self) -> None:
        """Open the transaction or savepoint, and create the table if it is missing."""
        stack = contextlib.AsyncExitStack()
        self._transaction = (stack, await stack.enter_async_context(self.connection.transaction()))
        await self._prepare_opened()

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened.

        Raises:
            StoreError: the commit failed (a deferred constraint, a serialization failure):
                PostgreSQL ends a transaction whose COMMIT it refuses, so nothing of it was
                applied.
            StoreUnavailableError: the connection was lost before the COMMIT's reply came
                (`commit_failed`): the server may or may not have committed, so the caller
                must retry with the same key (the retry replays or runs again, as it finds).
        """
        opened, self._transaction = self._transaction, None
        if opened is None:
            return
        stack, transaction = opened
        if commit:
            try:
                await stack.aclose()
            except psycopg.Error as error:
                raise commit_failed(self._translate(error), error) from error
        else:
            rollback = psycopg.Rollback(transaction)
            await stack.__aexit__(type(rollback), rollback, None)
