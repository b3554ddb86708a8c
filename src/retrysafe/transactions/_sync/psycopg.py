# Generated from transactions/_async/psycopg.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Transactional mode on a psycopg 3 connection, with the PostgreSQL store's own primitives.

The record statements are the store's (`stores/_async/postgres_records.py`), run on the
caller's connection. The claim is the store's upsert: inside the caller's transaction it inserts
the record uncommitted, so a duplicate's claim waits on the key's unique index until the first
transaction ends: after a commit it finds the finished record (and replays), after a rollback
it inserts its own. `ON CONFLICT DO UPDATE` locks the existing row even when its condition is
false, so the record cannot change under the transaction that found it; the claim reads it
under that lock (`locked=True`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from retrysafe._errors import InFlightError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sync.postgres_records import PostgresRecords
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres import record_table
from retrysafe.stores._sql.postgres_connection import store_error

__all__ = ["PsycopgBackend", "PsycopgRecords"]

# Tables known to exist, by (host, port, database, table): checked once per process, not per
# transaction. Only a table found committed is remembered; one created inside a transaction
# that may still roll back is checked again next time.
_ready_tables: set[tuple[str, int, str, str]] = set()


@contextlib.contextmanager
def _translated(*, claiming: bool = False) -> Iterator[None]:
    """Re-raise a driver error on one of our statements as ours."""
    try:
        yield
    except psycopg.Error as error:
        if claiming and isinstance(error, psycopg.errors.LockNotAvailable):
            # lock_timeout ended the wait on another transaction that holds the key.
            raise InFlightError(
                "A request is outstanding for this idempotency key (its transaction holds it)."
            ) from error
        raise store_error(error) from error


class PsycopgRecords:
    """The store's record statements on a psycopg connection inside a transaction.

    Args:
        connection: the caller's connection (any row factory).
        table: the records table (the PostgreSQL store's `table` option).
    """

    def __init__(
        self, connection: psycopg.Connection[Any], table: str = DEFAULT_TABLE
    ) -> None:
        self.connection = connection
        self._records = PostgresRecords(record_table(table))
        self.table = self._records.table  # where the outbox finds the records table's name

    def prepare(self) -> None:
        """Create the table if it is missing."""
        info = self.connection.info
        key = (info.host, info.port, info.dbname, self._records.table.name)
        if key in _ready_tables:
            return
        with _translated():
            if self._records.exists(self.connection):
                _ready_tables.add(key)
            else:
                self._records.create_schema(self.connection)

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim, reading the record under the lock the claim took."""
        with _translated(claiming=True):
            return self._records.claim(
                self.connection,
                identity,
                fingerprint,
                now=lambda: now,
                lease=lease,
                retention=retention,
                locked=True,
            )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record."""
        with _translated():
            return self._records.complete(
                self.connection, identity, token, outcome, now=now, retention=retention
            )

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease, locking its row for the rest of the transaction."""
        with _translated():
            return self._records.renew(self.connection, identity, token, now=now, lease=lease)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        with _translated():
            return self._records.checkpoint(
                self.connection, identity, token, recovery_point, now=now
            )


class PsycopgBackend(PsycopgRecords):
    """Transaction control on a psycopg connection (`connection.transaction()`).

    Outside a transaction it opens one and commits it; inside one (a connection not in
    autocommit that already ran a statement), a savepoint that commits with the caller's
    transaction.
    """

    def __init__(
        self, connection: psycopg.Connection[Any], table: str = DEFAULT_TABLE
    ) -> None:
        super().__init__(connection, table)
        self._transaction: tuple[contextlib.ExitStack, psycopg.Transaction] | None = None

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open."""
        return self.connection.info.transaction_status != TransactionStatus.IDLE

    def begin(self) -> None:
        """Open the transaction or savepoint, and create the table if it is missing."""
        stack = contextlib.ExitStack()
        self._transaction = (stack, stack.enter_context(self.connection.transaction()))
        try:
            self.prepare()
        except BaseException:
            self.end(commit=False)
            raise

    def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened."""
        opened, self._transaction = self._transaction, None
        if opened is None:
            return
        stack, transaction = opened
        if commit:
            stack.close()
        else:
            rollback = psycopg.Rollback(transaction)
            stack.__exit__(type(rollback), rollback, None)
