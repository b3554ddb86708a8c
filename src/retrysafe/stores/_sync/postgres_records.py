# Generated from stores/_async/postgres_records.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The PostgreSQL record primitives, each run on the psycopg connection it is given.

The one implementation of the PostgreSQL record: the store (`postgres.py`) runs it on pooled
autocommit connections, and transactional mode (`transactions/_async/psycopg.py`) on the
caller's connection inside the caller's transaction, so the record commits with the business
writes. Every statement is `RecordTable`'s (`stores/_sql/postgres.py`). Rows are read as tuples
in PostgreSQL's binary format whatever the connection's row factory: an outcome arrives as its
bytes rather than as hex text twice their size. The store's pooled connections
(`RecordsConnection`) keep a cursor per statement; any other connection gets a new cursor
per statement. The store's hot primitives (claim, complete, release, renew, checkpoint, get,
delete: one statement, at most one row each) may run instead on a `StatementRunner`, the
async store's auto-pipeline (`stores/_postgres_pipeline.py`). psycopg errors pass through; each
caller maps them to retrysafe's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from psycopg import Connection, Cursor, sql
from psycopg.rows import TupleRow, tuple_row

from retrysafe._clock import Clock
from retrysafe._concurrency import monotonic
from retrysafe._engine import may_take
from retrysafe._errors import FencedError, StoreError
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores._sql.postgres import (
    RecordTable,
    claim_params,
    held_params,
    list_query,
    record_from_row,
)
from retrysafe.stores.base import FENCED, Listing, StoreStats, encode_part, poll_delays, running

__all__ = ["PostgresRecords", "RecordsConnection", "StatementRunner"]

# A claim that finds a conflicting row it may not take reads that row; if the row changed in
# between (released, completed with no retention), the claim runs again, a bounded number of
# times: each round means another client made progress.
_CLAIM_ATTEMPTS = 8

Params = dict[str, Any]


class StatementRunner(Protocol):
    """Runs one record statement of the store, wherever it sees fit, and returns its first row."""

    def run_row(self, query: bytes, params: Params) -> TupleRow | None:
        """Run `query` with `params`; return its first row, or None."""
        ...

    def close(self) -> None:
        """Let what is in flight finish, then release the runner's connection."""
        ...

    def forget_idle(self) -> None:
        """Close the runner's connections that wait for no reply; the next statements open
        new ones (the network silently dropped another of the store's connections)."""
        ...


Target = Connection[Any] | StatementRunner
"""Where a hot primitive's statement runs: a connection, or the store's statement runner."""


class RecordsConnection(Connection[TupleRow]):
    """A connection of the store's pool, which keeps one cursor per record statement.

    A new cursor costs its adapters, and its first statement a transformer that looks up a
    dumper per parameter and a loader per column; a cursor that runs the same statement again
    reuses them: about a tenth of the client CPU of a claim and its completion, and of a replay.
    Each cursor holds its last result (a replayed outcome, say) until its statement runs again
    on this connection, or the connection closes.
    """

    _kept: dict[bytes, Cursor[TupleRow]] | None = None

    def kept_cursor(self, statement: bytes) -> Cursor[TupleRow]:
        """Return this connection's cursor for `statement`, made on first use."""
        if self._kept is None:
            self._kept = {}
        cursor = self._kept.get(statement)
        if cursor is None:
            cursor = self._kept[statement] = self.cursor(row_factory=tuple_row, binary=True)
        return cursor


def _cursor(conn: Connection[Any], statement: bytes | sql.Composed) -> Cursor[TupleRow]:
    """Return a cursor to run `statement` on: the one the store's connection keeps, or a new one.

    A cursor on the client side holds no server resource, so the new one is left to the garbage
    collector rather than closed.
    """
    if isinstance(conn, RecordsConnection) and isinstance(statement, bytes):
        return conn.kept_cursor(statement)
    return conn.cursor(row_factory=tuple_row, binary=True)


class PostgresRecords:
    """The primitives on one records table; each takes the connection to run on.

    Args:
        table: the table's statements.
    """

    def __init__(self, table: RecordTable) -> None:
        self.table = table

    def exists(self, conn: Connection[Any]) -> bool:
        """Return whether the table exists with every column this version uses."""
        row = self._row(conn, self.table.table_exists, {"quoted": self.table.quoted_name()})
        return row is not None and bool(row[0])

    def create_schema(self, conn: Connection[Any]) -> None:
        """Create what is missing of the table, in the connection's open transaction.

        Concurrent CREATE TABLE IF NOT EXISTS can still fail on the catalog's unique indexes;
        the advisory lock, held to the commit, makes first users take turns.
        """
        conn.execute(self.table.lock_schema, {"lock": self.table.schema_lock})
        for statement in self.table.create_schema:
            conn.execute(statement)

    def claim(
        self,
        conn: Target,
        identity: Identity,
        fingerprint: str,
        *,
        now: Callable[[], float],
        lease: float,
        retention: float,
        locked: bool = False,
    ) -> Claim:
        """Claim `identity` (insert, or take over as `may_take` allows), or return its record.

        `now` is read at each attempt, as one may have waited on another transaction's row
        lock. By default one statement claims or returns the record as its snapshot shows it,
        so a replay is one round trip. `locked` is for a claim inside a transaction: the claim
        then reads the record again under the row lock it took, as the transaction that held
        the row (a duplicate's, now committed) left it.
        """
        for _ in range(_CLAIM_ATTEMPTS):
            current = now()
            params = claim_params(
                identity, fingerprint, now=current, lease=lease, retention=retention
            )
            if locked:
                row = self._row(conn, self.table.claim, params)
                if row is not None:
                    return Claim(record_from_row(row), acquired=True, taken_over=bool(row[-1]))
                row = self._row(conn, self.table.get, {"id": params["id"], "now": current})
            else:
                row = self._row(conn, self.table.claim_or_get, params)
                if row is not None and row[-1]:
                    return Claim(record_from_row(row), acquired=True, taken_over=bool(row[-2]))
            # No row: the row that stopped the claim is newer than the snapshot, or gone.
            record = None if row is None else record_from_row(row)
            if record is not None and not may_take(record, fingerprint, current):
                return Claim(record, acquired=False)
        raise StoreError(f"The record kept changing during {_CLAIM_ATTEMPTS} claim attempts.")

    def complete(
        self,
        conn: Target,
        identity: Identity,
        token: str,
        outcome: bytes,
        *,
        now: float,
        retention: float,
    ) -> Record:
        """Store `outcome` on the held record and mark it done; a watched record notifies."""
        row = self._held(
            conn,
            self.table.complete_lean,
            identity,
            token,
            now,
            outcome=outcome,
            expires_at=now + retention,
            channel=self.table.channel,
        )
        return record_from_row((*row[:9], outcome, *row[10:]))  # not echoed: the caller's

    def release(self, conn: Target, identity: Identity, token: str, *, now: float) -> None:
        """Delete the held in-flight record; a watched record notifies."""
        self._held(conn, self.table.release, identity, token, now, channel=self.table.channel)

    def renew(
        self,
        conn: Target,
        identity: Identity,
        token: str,
        *,
        now: float,
        lease: float,
    ) -> Record:
        """Extend the holder's lease, and the retention deadline by as much; lock the row."""
        row = self._held(
            conn, self.table.renew, identity, token, now, lease_expires_at=now + lease
        )
        return record_from_row(row)

    def checkpoint(
        self,
        conn: Target,
        identity: Identity,
        token: str,
        recovery_point: str,
        *,
        now: float,
    ) -> Record:
        """Record the last committed phase on the held record."""
        row = self._held(
            conn,
            self.table.checkpoint,
            identity,
            token,
            now,
            recovery_point=encode_part(recovery_point),
        )
        return record_from_row(row)

    def get(self, conn: Target, identity: Identity, *, now: float) -> Record | None:
        """Return the live record, or None."""
        row = self._row(conn, self.table.get, {"id": identity.digest(), "now": now})
        return None if row is None else record_from_row(row)

    def delete(self, conn: Target, identity: Identity) -> bool:
        """Delete the record whatever its state; a watched record notifies its waiters, and
        the delete is announced to replay caches."""
        table = self.table
        params = {
            "id": identity.digest(),
            "channel": table.channel,
            "deleted": table.deleted_channel,
        }
        return self._row(conn, table.delete, params) is not None

    def purge_expired(self, conn: Connection[Any], *, now: float, limit: int) -> int:
        """Delete at most `limit` records past their retention; return how many."""
        rows = self._rows(conn, self.table.purge, {"now": now, "limit": limit})
        return int(rows[0][0])

    def list_records(
        self, conn: Connection[Any], listing: Listing, *, now: float
    ) -> list[Record]:
        """Return the live records `listing` asks for, newest first."""
        query, params = list_query(self.table, listing, now=now)
        return [record_from_row(row) for row in self._rows(conn, query, params)]

    def stats(self, conn: Connection[Any], *, now: float) -> StoreStats:
        """Return counts of live records by state, stored bytes, and the oldest claim."""
        rows = self._rows(conn, self.table.stats, {"now": now})
        in_flight, done, bytes_stored, oldest = rows[0]
        return StoreStats(
            in_flight=in_flight,
            done=done,
            bytes_stored=int(bytes_stored),
            oldest_in_flight_at=oldest,
        )

    def wait(
        self,
        conn: Connection[Any],
        identity: Identity,
        *,
        deadline: float,
        clock: Clock,
        recheck: float,
    ) -> Record | None:
        """Listen, then read and mark the record watched; read again on a notification, at
        lease expiry, or every `recheck` seconds; at `deadline` (monotonic) return the last read.

        Completions notify only for a watched record (`WATCH` in postgres_statements.py).
        While no read has managed to mark it (its row was locked at the time), the waiter polls
        with backoff. It stops listening before it returns and drops the notifications that
        arrived meanwhile, so the connection's next user does not receive them.
        """
        digest = identity.digest()
        conn.execute(self.table.listen)
        record, watched = self.watch(conn, identity, now=clock.now())
        delays = poll_delays()
        while running(record, clock.now()):
            remaining = deadline - monotonic()
            if remaining <= 0:
                break
            until_lease_ends = record.lease_expires_at - clock.now()
            period = min(remaining, until_lease_ends, recheck if watched else next(delays))
            if not _notified(conn, digest, period) and period >= remaining:
                break
            record, watched = self.watch(conn, identity, now=clock.now())
        conn.execute(self.table.unlisten)
        for _ in conn.notifies(timeout=0):
            pass
        return record

    def watch(
        self, conn: Connection[Any], identity: Identity, *, now: float
    ) -> tuple[Record | None, bool]:
        """Read the live record, marking it watched; return it and whether it is watched."""
        row = self._row(conn, self.table.watch, {"id": identity.digest(), "now": now})
        return (None, False) if row is None else (record_from_row(row), bool(row[-1]))

    def _held(
        self,
        conn: Target,
        query: bytes,
        identity: Identity,
        token: str,
        now: float,
        **params: Any,
    ) -> TupleRow:
        """Run a statement that acts only for the token holder; no row means fenced."""
        row = self._row(conn, query, held_params(identity, token, now, **params))
        if row is None:
            raise FencedError(FENCED)
        return row

    @staticmethod
    def _row(conn: Target, query: bytes, params: Params) -> TupleRow | None:
        """Run one statement; return its first row, or None."""
        if not isinstance(conn, Connection):
            return conn.run_row(query, params)
        cursor = _cursor(conn, query)
        cursor.execute(query, params)
        return cursor.fetchone()

    @staticmethod
    def _rows(
        conn: Connection[Any], query: bytes | sql.Composed, params: Params
    ) -> list[TupleRow]:
        """Run one statement; return its rows."""
        cursor = _cursor(conn, query)
        cursor.execute(query, params)
        return cursor.fetchall()


def _notified(conn: Connection[Any], digest: str, seconds: float) -> bool:
    """Wait up to `seconds` for a notification about record `digest`."""
    end = monotonic() + seconds
    while (left := end - monotonic()) > 0:
        found = False
        # stop_after=1 ends the generator on its own (no break), which releases the
        # connection's lock at once; notifications about other records just loop.
        for notify in conn.notifies(timeout=left, stop_after=1):
            found = found or notify.payload == digest
        if found:
            return True
    return False
