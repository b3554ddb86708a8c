"""Transactional mode on a SQLAlchemy session.

The session owns the transaction: `session.begin()` when none is open (committed when the block
ends), `session.begin_nested()` (a savepoint) when one is. The record statements run on the
session's own driver connection through the raw-driver records (`_dispatch.async_records`), so
they are part of the same transaction as everything the session flushes. On MySQL, whose
`CREATE TABLE` commits the open transaction, a missing records table is made before the
savepoint's statement opens one (in a session that has run nothing yet, nothing is open).
While the block runs, the session may not end that transaction itself (`SessionGuard`).

A transaction that a failed flush deactivated, or that PostgreSQL aborted, says so (`aborted`).
A commit that fails is rolled back and raised as the store's error, translated from the
driver's error under SQLAlchemy's by the session's records (`commit_failed`): a session left
with a failed transaction refuses every later statement until rolled back. For a savepoint, the
RELEASE that failed is rolled back to the savepoint, and the caller's transaction is left open
for the caller to end, as a savepoint's block never ends it.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError

from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql.sqlite_connection import store_error
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._async.sql_backend import AsyncDriverRecords, commit_failed
from retrysafe.transactions._dispatch import async_records
from retrysafe.transactions._session_guard import ENDED_INSIDE, SessionGuard
from retrysafe.transactions._sqlite import SQLiteRecords, _path

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

    from retrysafe.transactions._async.transaction import AsyncRecords

__all__ = ["AsyncSessionBackend"]


class AsyncSessionBackend:
    """Transaction control through a session, statements on its driver connection.

    Args:
        session: the caller's session.
        table: the records table.
    """

    def __init__(self, session: AsyncSession, table: str) -> None:
        self.session = session
        self.table = table
        self._transaction: AsyncSessionTransaction | None = None
        self._records: AsyncRecords | None = None
        self._guard: SessionGuard | None = None
        self._savepoint_name: str | None = None  # the savepoint `begin` opened, if it did

    def in_transaction(self) -> bool:
        """Return whether the session has a transaction open."""
        return self.session.in_transaction()

    def aborted(self) -> bool:
        """Return whether the block's transaction was aborted: SQLAlchemy deactivates it after
        a flush fails (having rolled it back, on every database), and PostgreSQL aborts it
        after any statement fails. A transaction the session ended itself is not aborted: it
        is refused as such (`ENDED_INSIDE`)."""
        transaction, records, guard = self._transaction, self._records, self._guard
        if transaction is None or records is None or guard is None or guard.ended:
            return False
        return not transaction.is_active or records.aborted()

    async def begin(self) -> None:
        """Begin (or begin nested), then create the table and take what the claim locks."""
        session = self.session
        if session.in_transaction():
            raw = await self._driver_connection()
            if drivers.commits_on_ddl(raw):
                await async_records(raw, self.table).prepare()  # before the SAVEPOINT
            self._transaction = await session.begin_nested()
            self._savepoint_name = await self._savepoint()
        else:
            self._transaction = await session.begin()
        self._guard = SessionGuard.over(session, self._transaction)
        self._guard.arm()
        try:
            self._records = async_records(await self._driver_connection(), self.table)
            await self._records.prepare()
        except BaseException:
            await self.end(commit=False)
            raise

    async def _driver_connection(self) -> object:
        """Return the DB-API connection under the session's connection."""
        connection = await self.session.connection()
        return (await connection.get_raw_connection()).driver_connection

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started.

        Raises:
            StoreError: the commit (a savepoint's RELEASE) failed; what `begin` started was
                rolled back, and a caller's transaction around a savepoint is still open.
        """
        transaction, self._transaction = self._transaction, None
        guard, self._guard = self._guard, None
        records, self._records = self._records, None
        savepoint, self._savepoint_name = self._savepoint_name, None
        if transaction is None or guard is None:
            return
        guard.ending = True
        try:
            if guard.ended:  # the session ended it in the block: drop what it wrote since
                await self.session.rollback()
            elif commit:
                await self._commit(transaction, records, savepoint)
            else:
                await transaction.rollback()
        finally:
            guard.disarm()

    async def _commit(
        self,
        transaction: AsyncSessionTransaction,
        records: AsyncRecords | None,
        savepoint: str | None,
    ) -> None:
        """Commit `transaction` (release `savepoint`, when it is one); if that fails, undo it
        and raise the store's error.

        Pending writes are flushed first: their errors are the block's own, raised as they are.
        """
        try:
            await self.session.flush()
        except BaseException:
            await transaction.rollback()
            raise
        try:
            await transaction.commit()
        except DBAPIError as error:
            cause = _store_error(records, error)
            try:
                await self._undo(transaction, savepoint)
            except DBAPIError as failed:
                if cause is None:
                    raise
                raise type(cause)(
                    f"The transaction could not commit, and rolling it back failed too "
                    f"({failed.orig}): roll the session back before using it again. {cause}"
                ) from error
            if cause is None:
                raise
            if savepoint is None:
                raise commit_failed(cause, error.orig) from error
            raise type(cause)(
                "The transactional block's savepoint could not be released, so it was rolled "
                "back with every write made in it: nothing of it was applied. The enclosing "
                f"transaction is still open, yours to commit or roll back. {cause}"
            ) from error

    async def _undo(self, transaction: AsyncSessionTransaction, savepoint: str | None) -> None:
        """Roll back a transaction whose commit failed, or a savepoint whose RELEASE did."""
        await transaction.rollback()
        if savepoint is not None:
            # After a failed RELEASE, SQLAlchemy closes the savepoint without a statement,
            # leaving the block's writes in the enclosing transaction (which would commit them).
            connection = await self.session.connection()
            await connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {savepoint}")

    async def _savepoint(self) -> str | None:
        """Return the name of the savepoint that `begin_nested` opened on the session's
        connection (SQLAlchemy's own, `sa_savepoint_<n>`, which it keeps private)."""
        nested = (await self.session.connection()).get_nested_transaction()
        nested = getattr(nested, "sync_transaction", nested)  # an AsyncTransaction's
        name = getattr(nested, "_savepoint", None)
        return name if isinstance(name, str) else None

    async def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim in the session's transaction."""
        return await self._held().claim(
            identity, fingerprint, now=now, lease=lease, retention=retention
        )

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Flush the session's pending writes, then store the outcome."""
        await self.session.flush()
        return await self._held().complete(identity, token, outcome, now=now, retention=retention)

    async def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease."""
        return await self._held().renew(identity, token, now=now, lease=lease)

    async def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Flush the session's pending writes, then record the last committed phase."""
        await self.session.flush()
        return await self._held().checkpoint(identity, token, recovery_point, now=now)

    def _held(self) -> AsyncRecords:
        if self._guard is not None and self._guard.ended:
            raise RuntimeError(ENDED_INSIDE)
        if self._records is None:
            raise RuntimeError("The session's transaction has not begun.")
        return self._records


def _store_error(records: AsyncRecords | None, error: DBAPIError) -> Exception | None:
    """Return our error for the driver's error under SQLAlchemy's `error`, as the session's
    `records` translate that driver's errors (the store's); None for one they do not know."""
    cause = error.orig
    if isinstance(records, AsyncDriverRecords) and isinstance(cause, records.driver_error):
        return records._translate(cause)  # psycopg, MySQL
    if isinstance(records, SQLiteRecords) and isinstance(cause, sqlite3.Error):
        return store_error(cause, _path(records.connection))
    return None
