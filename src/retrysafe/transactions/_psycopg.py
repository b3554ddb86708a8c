"""Transactional mode on a psycopg 3 connection, with the PostgreSQL store's own statements.

The claim is the store's one-statement upsert. Inside the caller's transaction it inserts the
record uncommitted, so a duplicate's claim waits on the key's unique index until the first
transaction ends: after a commit it finds the finished record (and replays), after a rollback
it inserts its own. `ON CONFLICT DO UPDATE` locks the existing row even when its condition is
false, so the record cannot change under the transaction that found it.

The logic is written once as flows (generators that yield a statement and receive its first
row) and driven by a sync and an async connection alike.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row

from retrysafe._engine import may_take
from retrysafe._errors import FencedError, InFlightError, StoreError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._pg_sql import (
    DEFAULT_TABLE,
    RecordTable,
    identity_params,
    record_from_row,
    store_error,
)
from retrysafe.stores.base import encode_part, new_token

__all__ = ["AsyncPsycopgBackend", "AsyncPsycopgRecords", "PsycopgBackend", "PsycopgRecords"]

T = TypeVar("T")
Query = tuple[sql.Composed, dict[str, Any]]
Flow = Generator[Query, TupleRow | None, T]

_CLAIM_ATTEMPTS = 3
_FENCED = "This claim no longer holds the key: its lease was taken over or the record ended."

# Tables known to exist, by (host, port, database, table): checked once per process, not per
# transaction. Only a table found committed is remembered; one created inside a transaction
# that may still roll back is checked again next time.
_ready_tables: set[tuple[str, int, str, str]] = set()


def _schema_flow(table: RecordTable, where: tuple[str, int, str]) -> Flow[None]:
    key = (*where, table.name)
    if key in _ready_tables:
        return
    row = yield table.table_exists, {"quoted": table.quoted_name()}
    if row is not None and row[0]:
        _ready_tables.add(key)
        return
    # Concurrent first uses take turns on the store's advisory lock (held to the commit).
    yield table.lock_schema, {"lock": table.schema_lock}
    for statement in table.create_schema:
        yield statement, {}


def _claim_flow(
    table: RecordTable,
    identity: Identity,
    fingerprint: str,
    *,
    now: float,
    lease: float,
    retention: float,
) -> Flow[Claim]:
    params = identity_params(identity)
    params.update(
        fingerprint=encode_part(fingerprint),
        token=new_token(),
        now=now,
        lease_expires_at=now + lease,
        expires_at=now + lease + retention,
    )
    for _ in range(_CLAIM_ATTEMPTS):
        row = yield table.claim, params
        if row is not None:
            return Claim(record_from_row(row), acquired=True, taken_over=bool(row[-1]))
        row = yield table.get, {"id": params["id"], "now": now}
        existing = None if row is None else record_from_row(row)
        if existing is not None and not may_take(existing, fingerprint, now):
            return Claim(existing, acquired=False)
    raise StoreError(f"The record kept changing during {_CLAIM_ATTEMPTS} claim attempts.")


def _held_flow(
    query: sql.Composed, identity: Identity, token: str, now: float, **params: Any
) -> Flow[Record]:
    row = yield query, {"id": identity.digest(), "token": token, "now": now, **params}
    if row is None:
        raise FencedError(_FENCED)
    return record_from_row(row)


class _Flows:
    """The flows of every record statement, for one table."""

    def __init__(self, table: str) -> None:
        self.table = RecordTable.for_table(table)

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Flow[Claim]:
        return _claim_flow(
            self.table, identity, fingerprint, now=now, lease=lease, retention=retention
        )

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Flow[Record]:
        return _held_flow(
            self.table.complete,
            identity,
            token,
            now,
            outcome=outcome,
            expires_at=now + retention,
            channel=self.table.channel,
        )

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Flow[Record]:
        return _held_flow(self.table.renew, identity, token, now, lease_expires_at=now + lease)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Flow[Record]:
        return _held_flow(
            self.table.checkpoint,
            identity,
            token,
            now,
            recovery_point=encode_part(recovery_point),
        )


def _where(info: psycopg.ConnectionInfo) -> tuple[str, int, str]:
    return (info.host, info.port, info.dbname)


def _translate(error: psycopg.Error, *, claiming: bool) -> Exception:
    """Return our error for a driver error on one of our statements."""
    if claiming and isinstance(error, psycopg.errors.LockNotAvailable):
        # lock_timeout ended the wait on another transaction that holds the key.
        return InFlightError(
            "A request is outstanding for this idempotency key (its transaction holds it)."
        )
    return store_error(error)


class PsycopgRecords:
    """The store's record statements on a psycopg connection inside a transaction.

    Args:
        connection: the caller's connection (any row factory).
        table: the records table (the PostgreSQL store's `table` option).
    """

    def __init__(self, connection: psycopg.Connection[Any], table: str = DEFAULT_TABLE) -> None:
        self.connection = connection
        self._flows = _Flows(table)

    def prepare(self) -> None:
        """Create the table if it is missing."""
        self._drive(_schema_flow(self._flows.table, _where(self.connection.info)))

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim."""
        flow = self._flows.claim(identity, fingerprint, now=now, lease=lease, retention=retention)
        return self._drive(flow, claiming=True)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record."""
        return self._drive(
            self._flows.complete(identity, token, outcome, now=now, retention=retention)
        )

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease, locking its row for the rest of the transaction."""
        return self._drive(self._flows.renew(identity, token, now=now, lease=lease))

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        return self._drive(self._flows.checkpoint(identity, token, recovery_point, now=now))

    def _drive(self, flow: Flow[T], *, claiming: bool = False) -> T:
        try:
            with self.connection.cursor(row_factory=tuple_row) as cursor:
                query = next(flow)
                while True:
                    cursor.execute(*query)
                    row = cursor.fetchone() if cursor.description is not None else None
                    query = flow.send(row)
        except StopIteration as done:
            result: T = done.value
            return result
        except psycopg.Error as error:
            raise _translate(error, claiming=claiming) from error


class PsycopgBackend(PsycopgRecords):
    """Transaction control on a psycopg connection (`connection.transaction()`).

    Outside a transaction it opens one and commits it; inside one (a connection not in
    autocommit that already ran a statement), a savepoint that commits with the caller's
    transaction.
    """

    def __init__(self, connection: psycopg.Connection[Any], table: str = DEFAULT_TABLE) -> None:
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


class AsyncPsycopgRecords:
    """The async twin of `PsycopgRecords`."""

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], table: str = DEFAULT_TABLE
    ) -> None:
        self.connection = connection
        self._flows = _Flows(table)

    async def prepare(self) -> None:
        """Create the table if it is missing."""
        await self._drive(_schema_flow(self._flows.table, _where(self.connection.info)))

    async def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Run the store's claim."""
        flow = self._flows.claim(identity, fingerprint, now=now, lease=lease, retention=retention)
        return await self._drive(flow, claiming=True)

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store the outcome on the held record."""
        return await self._drive(
            self._flows.complete(identity, token, outcome, now=now, retention=retention)
        )

    async def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Extend the held record's lease, locking its row for the rest of the transaction."""
        return await self._drive(self._flows.renew(identity, token, now=now, lease=lease))

    async def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase."""
        return await self._drive(self._flows.checkpoint(identity, token, recovery_point, now=now))

    async def _drive(self, flow: Flow[T], *, claiming: bool = False) -> T:
        try:
            async with self.connection.cursor(row_factory=tuple_row) as cursor:
                query = next(flow)
                while True:
                    await cursor.execute(*query)
                    row = await cursor.fetchone() if cursor.description is not None else None
                    query = flow.send(row)
        except StopIteration as done:
            result: T = done.value
            return result
        except psycopg.Error as error:
            raise _translate(error, claiming=claiming) from error


class AsyncPsycopgBackend(AsyncPsycopgRecords):
    """The async twin of `PsycopgBackend`."""

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
        try:
            await self.prepare()
        except BaseException:
            await self.end(commit=False)
            raise

    async def end(self, *, commit: bool) -> None:
        """Commit or roll back what `begin` opened."""
        opened, self._transaction = self._transaction, None
        if opened is None:
            return
        stack, transaction = opened
        if commit:
            await stack.aclose()
        else:
            rollback = psycopg.Rollback(transaction)
            await stack.__aexit__(type(rollback), rollback, None)
