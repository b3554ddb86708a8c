"""Transactional mode on a SQLAlchemy session.

The session owns the transaction: `session.begin()` when none is open (committed when the block
ends), `session.begin_nested()` (a savepoint) when one is. The record statements run on the
session's own driver connection through the raw-driver records (`_dispatch.async_records`), so
they are part of the same transaction as everything the session flushes. On MySQL, whose
`CREATE TABLE` commits the open transaction, a missing records table is made before the
savepoint's statement opens one (in a session that has run nothing yet, nothing is open).
While the block runs, the session may not end that transaction itself (`SessionGuard`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe._record import Claim, Identity, Record
from retrysafe.transactions import _drivers as drivers
from retrysafe.transactions._dispatch import async_records
from retrysafe.transactions._session_guard import ENDED_INSIDE, SessionGuard

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

    def in_transaction(self) -> bool:
        """Return whether the session has a transaction open."""
        return self.session.in_transaction()

    async def begin(self) -> None:
        """Begin (or begin nested), then create the table and take what the claim locks."""
        session = self.session
        if session.in_transaction():
            raw = await self._driver_connection()
            if drivers.commits_on_ddl(raw):
                await async_records(raw, self.table).prepare()  # before the SAVEPOINT
            self._transaction = await session.begin_nested()
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
        """Commit or roll back what `begin` started."""
        transaction, self._transaction = self._transaction, None
        guard, self._guard = self._guard, None
        self._records = None
        if transaction is None or guard is None:
            return
        guard.ending = True
        try:
            if guard.ended:  # the session ended it in the block: drop what it wrote since
                await self.session.rollback()
            elif commit:
                await transaction.commit()
            else:
                await transaction.rollback()
        finally:
            guard.disarm()

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
