"""Transactional mode: the claim, the business writes and the outcome commit together (B29).

`AsyncTransaction` drives one database transaction through a backend, the part that knows a
driver (`psycopg.py`, `sqlalchemy.py`; for `sqlite3`, `transactions/_sqlite.py`):

    begin (or a savepoint) -> claim the key -> [the caller's writes] -> store the outcome -> commit

The claim runs on the caller's connection with the store's own statements, so the record lands
in the store's table, where the stores, the middleware and `retrysafe keys` see it. A duplicate
that arrives meanwhile waits on the key's unique index (PostgreSQL) or the write lock (SQLite)
until the first transaction ends, then replays; an exception or a crash rolls back the claim
together with the writes, so a retry starts on clean state.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Protocol

from retrysafe._clock import Clock
from retrysafe._record import Claim, Identity, Record
from retrysafe.transactions._state import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    FORGOTTEN_OUTCOME,
    TransactionState,
)

__all__ = ["AsyncBackend", "AsyncRecordStatements", "AsyncRecords", "AsyncTransaction"]

logger = logging.getLogger("retrysafe")


class AsyncRecordStatements(Protocol):
    """The store's record statements, run in the transaction that is open on a connection."""

    async def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim inside the transaction."""
        ...

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record inside the transaction."""
        ...

    async def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease inside the transaction (and lock it there)."""
        ...

    async def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase on the held record inside the transaction."""
        ...


class AsyncRecords(AsyncRecordStatements, Protocol):
    """The record statements on a driver connection whose transaction something else controls."""

    async def prepare(self) -> None:
        """Create the table if missing, and take what the claim must lock."""
        ...


class AsyncBackend(AsyncRecordStatements, Protocol):
    """A connection's transaction control and the record statements run inside it."""

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        ...

    async def begin(self) -> None:
        """Start a transaction (a savepoint if one is open), holding what the claim must lock."""
        ...

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started."""
        ...


class AsyncTransaction(TransactionState):
    """A database transaction in which a key's claim commits with the business writes.

    Use it as a context manager; build it with `retrysafe.transactions.sqlite`, `.psycopg`
    or `.sqlalchemy`, which pick the colour of transaction the connection takes:

        async with transactions.psycopg(conn, identity=identity, fingerprint=fp) as tx:
            if tx.replay:
                return tx.outcome
            await conn.execute("INSERT INTO payments ...")
            tx.complete(body)

    Entering claims the key inside a new transaction (or a savepoint of the open one). A
    finished key is a replay: `tx.outcome` holds the stored outcome and anything the block
    writes is rolled back. The same key with another fingerprint raises `KeyMismatchError`; a
    key held by an operation committed in flight (atomic phases) raises `InFlightError`.
    Leaving the block stores the outcome given to `complete` and commits; an exception rolls
    back the claim with the writes and propagates.
    """

    def __init__(
        self,
        backend: AsyncBackend,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            identity=identity,
            fingerprint=fingerprint,
            lease=lease,
            retention=retention,
            clock=clock,
        )
        self._backend = backend

    async def __aenter__(self) -> AsyncTransaction:
        self._start()
        await self._backend.begin()
        try:
            now = self.clock.now()
            claim = await self._backend.claim(
                self.identity,
                self.fingerprint,
                now=now,
                lease=self.lease,
                retention=self.retention,
            )
            self._accept(claim, now)
        except BaseException:
            await self._rollback()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome = self._outcome_to_store(exc_type)
        if outcome is None:
            await self._rollback(quiet=exc_type is not None)
            if self._forgot_outcome(exc_type):
                raise RuntimeError(FORGOTTEN_OUTCOME)
            return
        try:
            await self._backend.complete(
                self.identity,
                self._held().token,
                outcome,
                now=self.clock.now(),
                retention=self.retention,
            )
        except BaseException:
            await self._rollback(quiet=True)
            raise
        await self._backend.end(commit=True)

    async def _rollback(self, *, quiet: bool = True) -> None:
        try:
            await self._backend.end(commit=False)
        except Exception:
            if not quiet:
                raise
            logger.warning("Rolling back a transaction failed", exc_info=True)
