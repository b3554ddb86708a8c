# Generated from transactions/_async/transaction.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Transactional mode: the claim, the business writes and the outcome commit together (B29).

`Transaction` drives one database transaction through a backend, the part that knows a
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
from typing import Protocol, Unpack

from retrysafe._record import Claim, Identity, Record
from retrysafe.outbox._messages import Outbox
from retrysafe.transactions._sync.outbox import OutboxWriter
from retrysafe.transactions._state import (
    CLAIM_ROUNDS,
    FORGOTTEN_OUTCOME,
    ClaimOptions,
    ClaimSettings,
    DeadlockRollbackError,
    TransactionState,
    check_not_aborted,
)

__all__ = [
    "Backend",
    "RecordStatements",
    "Records",
    "Transaction",
    "begin_claim",
    "rollback",
]

logger = logging.getLogger("retrysafe")


class RecordStatements(Protocol):
    """The store's record statements, run in the transaction that is open on a connection."""

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim inside the transaction."""
        ...

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record inside the transaction."""
        ...

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease inside the transaction (and lock it there)."""
        ...

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase on the held record inside the transaction."""
        ...


class Records(RecordStatements, Protocol):
    """The record statements on a driver connection whose transaction something else controls."""

    def prepare(self) -> None:
        """Create the table if missing, and take what the claim must lock."""
        ...

    def aborted(self) -> bool:
        """Return whether the database aborted the open transaction (a statement failed)."""
        ...


class Backend(RecordStatements, Protocol):
    """A connection's transaction control and the record statements run inside it."""

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        ...

    def begin(self) -> None:
        """Start a transaction (a savepoint if one is open), holding what the claim must lock."""
        ...

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` started.

        A commit that fails must leave nothing open, or later blocks on the connection would
        nest in it: the `sqlite3`, psycopg and MySQL backends roll back what `begin` started and
        raise a `StoreError` (`StoreUnavailableError` for a database that cannot be used now,
        such as SQLite's locked file), the driver's error chained.
        """
        ...


class Transaction(TransactionState):
    """A database transaction in which a key's claim commits with the business writes.

    Use it as a context manager; build it with `retrysafe.transactions.sqlite`, `.psycopg`
    or `.sqlalchemy`, which pick the colour of transaction the connection takes:

        with transactions.psycopg(conn, identity=identity, fingerprint=fp) as tx:
            if tx.replay:
                return tx.outcome
            conn.execute("INSERT INTO payments ...")
            tx.complete(body)

    Entering claims the key inside a new transaction (or a savepoint of the open one). A
    finished key is a replay: `tx.outcome` holds the stored outcome and anything the block
    writes is rolled back. The same key with another fingerprint raises `KeyMismatchError`; a
    key held by an operation committed in flight (atomic phases) raises `InFlightError`.
    Leaving the block stores the outcome given to `complete` and commits; an exception rolls
    back the claim with the writes and propagates. A transaction the database aborted (the
    block caught a database error and went on) cannot store it: it is rolled back, and raises
    `TransactionAbortedError`. `tx.outbox.add(topic, payload)` adds a
    message that is written in the same transaction when it commits (`retrysafe.outbox`).
    """

    def __init__(self, backend: Backend, **options: Unpack[ClaimOptions]) -> None:
        super().__init__(**options)
        self._backend = backend
        self.outbox: Outbox  # once the key is claimed: message ids derive from its record

    def __enter__(self) -> Transaction:
        self._start()
        self._claim = begin_claim(self._backend, self)
        self.outbox = Outbox(self._claim.record)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        outcome = self._outcome_to_store(exc_type)
        if outcome is None:
            rollback(self._backend, quiet=exc_type is not None)
            if self._forgot_outcome(exc_type):
                raise RuntimeError(FORGOTTEN_OUTCOME)
            return
        try:
            check_not_aborted(self._backend)
            OutboxWriter(self._backend).write(self.outbox, now=self.clock.now())
            self._backend.complete(
                self.identity,
                self._held().token,
                outcome,
                now=self.clock.now(),
                retention=self.retention,
            )
        except BaseException:
            rollback(self._backend)
            raise
        self._backend.end(commit=True)  # a failed commit is rolled back there (`end`)


def begin_claim(backend: Backend, settings: ClaimSettings) -> Claim:
    """Begin a transaction on `backend` and claim the key in it; raise the claim's refusal.

    A refusal, or any failure, rolls the transaction back before it propagates. A claim whose
    transaction the database rolled back to break a deadlock (MySQL: duplicates that waited on
    a claim that rolled back) begins again, when the transaction is its own: nothing else was
    in it. Inside the caller's transaction, the `DeadlockRollbackError` propagates.
    """
    restartable = not backend.in_transaction()
    for round_ in range(1, CLAIM_ROUNDS + 1):
        backend.begin()
        try:
            now = settings.clock.now()
            claim = backend.claim(
                settings.identity,
                settings.fingerprint,
                now=now,
                lease=settings.lease,
                retention=settings.retention,
            )
            settings.check(claim, now)
        except DeadlockRollbackError:
            rollback(backend)
            if restartable and round_ < CLAIM_ROUNDS:
                logger.debug("A claim's transaction was a deadlock's victim; beginning again")
                continue
            raise
        except BaseException:
            rollback(backend)
            raise
        return claim
    raise AssertionError("unreachable")  # pragma: no cover - the last round returns or raises


def rollback(backend: Backend, *, quiet: bool = True) -> None:
    """Roll back what `backend.begin` started; a failure is logged when `quiet`, else raised."""
    try:
        backend.end(commit=False)
    except Exception:
        if not quiet:
            raise
        logger.warning("Rolling back a transaction failed", exc_info=True)
