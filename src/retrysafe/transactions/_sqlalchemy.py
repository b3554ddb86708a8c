"""Transactional mode on a SQLAlchemy `Session` or `AsyncSession`.

The session owns the transaction: `session.begin()` when none is open (committed when the block
ends), `session.begin_nested()` (a savepoint) when one is. The record statements run on the
session's own driver connection (`sqlite3` or psycopg 3) through the raw-driver backends, so
they are part of the same transaction as everything the session flushes.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity, Record
from retrysafe.transactions._sqlite import SQLiteRecords

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction
    from sqlalchemy.orm import Session, SessionTransaction

    from retrysafe.transactions._psycopg import AsyncPsycopgRecords, PsycopgRecords

__all__ = ["AsyncSessionBackend", "SessionBackend"]

_SUPPORTED = "sqlite (the standard sqlite3 driver) or postgresql+psycopg (psycopg 3)"


def _records(driver_connection: Any, table: str) -> SQLiteRecords | PsycopgRecords:
    """Return the record statements for a sync session's driver connection."""
    if isinstance(driver_connection, sqlite3.Connection):
        return SQLiteRecords(driver_connection, table)
    import psycopg  # noqa: PLC0415 - optional driver, loaded only for a PostgreSQL session

    from retrysafe.transactions._psycopg import PsycopgRecords  # noqa: PLC0415

    if isinstance(driver_connection, psycopg.Connection):
        return PsycopgRecords(driver_connection, table)
    raise ConfigurationError(
        f"Transactional mode supports sessions on {_SUPPORTED}, "
        f"not a {type(driver_connection).__module__} connection."
    )


class SessionBackend:
    """Transaction control through a sync `Session`, statements on its driver connection.

    Args:
        session: the caller's session.
        table: the records table.
    """

    def __init__(self, session: Session, table: str) -> None:
        self.session = session
        self.table = table
        self._transaction: SessionTransaction | None = None
        self._records: SQLiteRecords | PsycopgRecords | None = None

    def in_transaction(self) -> bool:
        """Return whether the session has a transaction open."""
        return self.session.in_transaction()

    def begin(self) -> None:
        """Begin (or begin nested), then create the table and take what the claim locks."""
        session = self.session
        self._transaction = session.begin_nested() if session.in_transaction() else session.begin()
        try:
            raw = session.connection().connection.driver_connection
            self._records = _records(raw, self.table)
            self._records.prepare()
        except BaseException:
            self.end(commit=False)
            raise

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started."""
        transaction, self._transaction = self._transaction, None
        self._records = None
        if transaction is None:
            return
        if commit:
            transaction.commit()
        else:
            transaction.rollback()

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim in the session's transaction."""
        return self._held().claim(identity, fingerprint, now=now, lease=lease, retention=retention)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Flush the session's pending writes, then store the outcome."""
        self.session.flush()
        return self._held().complete(identity, token, outcome, now=now, retention=retention)

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease."""
        return self._held().renew(identity, token, now=now, lease=lease)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Flush the session's pending writes, then record the last committed phase."""
        self.session.flush()
        return self._held().checkpoint(identity, token, recovery_point, now=now)

    def _held(self) -> SQLiteRecords | PsycopgRecords:
        if self._records is None:
            raise RuntimeError("The session's transaction has not begun.")
        return self._records


class AsyncSessionBackend:
    """Transaction control through an `AsyncSession` on psycopg 3 (`postgresql+psycopg`).

    Args:
        session: the caller's session.
        table: the records table.
    """

    def __init__(self, session: AsyncSession, table: str) -> None:
        self.session = session
        self.table = table
        self._transaction: AsyncSessionTransaction | None = None
        self._records: AsyncPsycopgRecords | None = None

    def in_transaction(self) -> bool:
        """Return whether the session has a transaction open."""
        return self.session.in_transaction()

    async def begin(self) -> None:
        """Begin (or begin nested), then create the table if it is missing."""
        session = self.session
        nested = session.in_transaction()
        transaction = session.begin_nested() if nested else session.begin()
        self._transaction = await transaction.start()
        try:
            connection = await session.connection()
            raw = (await connection.get_raw_connection()).driver_connection
            self._records = _async_records(raw, self.table)
            await self._records.prepare()
        except BaseException:
            await self.end(commit=False)
            raise

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started."""
        transaction, self._transaction = self._transaction, None
        self._records = None
        if transaction is None:
            return
        if commit:
            await transaction.commit()
        else:
            await transaction.rollback()

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

    def _held(self) -> AsyncPsycopgRecords:
        if self._records is None:
            raise RuntimeError("The session's transaction has not begun.")
        return self._records


def _async_records(driver_connection: Any, table: str) -> AsyncPsycopgRecords:
    """Return the record statements for an async session's driver connection."""
    import psycopg  # noqa: PLC0415 - optional driver, loaded only for a PostgreSQL session

    from retrysafe.transactions._psycopg import AsyncPsycopgRecords  # noqa: PLC0415

    if isinstance(driver_connection, psycopg.AsyncConnection):
        return AsyncPsycopgRecords(driver_connection, table)
    raise ConfigurationError(
        "Transactional mode on an AsyncSession supports postgresql+psycopg (psycopg 3), "
        f"not a {type(driver_connection).__module__} connection."
    )
