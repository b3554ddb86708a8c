"""The relay's side of the outbox table: read committed messages, mark them published, purge.

One class for both databases; what differs is the SQL (`_sql.py`) and how a transaction starts.
On PostgreSQL a batch is read `FOR UPDATE SKIP LOCKED` and marked in the same transaction,
held while the batch is published: another relay skips the locked rows, and a relay that dies
mid-batch rolls its locks back, so another publishes those rows again, with the same ids. On
SQLite the batch is read, published, then marked in a short write transaction: the write lock
is never held while a broker is waited for, and one relay runs per database file. What a batch
publishes, counts as failed and parks is decided by `_batch.Batch`.

The table's schema change (`prepare`: creating it, adding what an older release's table lacks)
must never hold up the app's writes. On PostgreSQL a change waits for a lock on the table, and
every insert after it waits behind the change: so a table that lacks nothing is left alone
(read from the catalog), and a change is made only while no other session holds the table,
under a `lock_timeout` of at most `UPGRADE_LOCK_WAIT`, shorter than the deadline, so that the
server ends the wait itself; otherwise it is deferred (`pending`), the relay publishes with the
columns the table has, and tries again before its next batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

from retrysafe._errors import ConfigurationError
from retrysafe.outbox._batch import Batch, ParkedMessage, Publish
from retrysafe.outbox._messages import outbox_table
from retrysafe.outbox._sql import OutboxTable
from retrysafe.stores import backend_url
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres_deadline import Armed, ReadDeadline, unavailable
from retrysafe.transactions import _drivers as drivers

__all__ = ["UPGRADE_LOCK_WAIT", "OutboxSource", "open_source"]

_SQLITE_TIMEOUT = 30.0
UPGRADE_LOCK_WAIT: Final = 0.5
"""Seconds a schema change on PostgreSQL waits for a lock, at most (a quarter of the deadline
if shorter): the longest it can hold up a write that came after it. Below PostgreSQL's default
`deadlock_timeout` (1 s), so a relay's batch that comes to wait on it is never the deadlock's
victim: the change gives up first."""
_GAVE_UP: Final = frozenset({"55P03", "40P01"})  # lock_timeout ended the wait; a deadlock's victim
_LOCK_WAIT: Final = "SELECT set_config('lock_timeout', %s, true)"  # SET LOCAL, with a parameter


class OutboxSource:
    """The outbox table on one connection (`sqlite3` or psycopg), as the relay uses it.

    Args:
        connection: a `sqlite3.Connection` or a psycopg `Connection`, with no transaction open.
        table: the outbox table.
        owned: whether `close` closes the connection (the relay opened it from a URL).
        deadline: on a PostgreSQL connection the relay opened, what bounds each wait for the
            server (`read_timeout`, as in the store), so a stalled server fails the batch and
            the relay opens a new connection; publishing is not bounded by it.
    """

    def __init__(
        self,
        connection: Any,
        table: OutboxTable,
        *,
        owned: bool = False,
        deadline: ReadDeadline | None = None,
    ) -> None:
        self.connection, self.table, self.owned = connection, table, owned
        self._deadline = deadline
        self.found = True  # whether the table exists (PostgreSQL: its creation may be deferred)
        self.pending = False  # whether it lacks something, its change deferred (PostgreSQL)

    def prepare(self) -> None:
        """Create the table if it is missing; add what a table of an older release lacks.

        On PostgreSQL the change is deferred (`pending`) while another session holds the table
        or a lock is not granted within `UPGRADE_LOCK_WAIT`; the relay then publishes with the
        columns the table has (`OutboxTable.parking`), and calls `prepare` again later.
        """
        if self.table.dialect == "postgresql":
            self._prepare_postgres()
            return
        with self._transaction() as cursor:
            for statement in self.table.create:
                cursor.execute(statement)
            for column, add in self.table.added_columns:
                cursor.execute(self.table.missing_column, (column,))
                if cursor.fetchone()[0]:
                    cursor.execute(add)

    def _prepare_postgres(self) -> None:
        """Change the table only if it lacks something, while no other session holds it, each
        lock waited for `UPGRADE_LOCK_WAIT` at most; else defer the change."""
        table, done = self.table, False
        missing: tuple[Any, ...] = ()
        wait = UPGRADE_LOCK_WAIT
        if self._deadline is not None:
            wait = min(wait, self._deadline.timeout / 4)  # the server gives up before the cut
        try:
            with self._bounded(), self._transaction() as cursor:
                cursor.execute(_LOCK_WAIT, (f"{max(1, round(wait * 1000))}ms",))
                missing = _row(cursor, table.missing)
                if any(missing):
                    cursor.execute(table.lock_schema, (table.name,))  # creators take turns
                    missing = _row(cursor, table.missing)  # the one before may have done it
                if missing[0] or not any(missing) or not _row(cursor, table.held)[0]:
                    for statement in table.upgrades(missing):
                        cursor.execute(statement)
                    done = True
        except Exception as error:
            if not missing or getattr(error, "sqlstate", None) not in _GAVE_UP:
                raise
        self.found, self.pending = done or not missing[0], not done
        self.table = dataclasses.replace(table, parking=done or table.has_parking(missing))

    def relay(
        self, limit: int, publish: Publish, now: Callable[[], float], max_attempts: int | None
    ) -> Batch:
        """Publish up to `limit` committed messages in id order; return the batch, whose
        published messages are marked, failures counted and parked messages parked.

        A message is marked published only once `publish` returned for it. The batch's
        `error` (a failure that stopped it) is the caller's to raise.
        """
        batch = Batch(publish, limit, max_attempts if self.table.parking else None)
        if not self.found:
            return batch  # its creation deferred: no message was written yet
        if self.table.dialect == "postgresql":
            with self._bounded() as bound, self._transaction() as cursor:
                more = True
                while more:
                    cursor.execute(self.table.unpublished, (batch.after, limit))
                    rows = cursor.fetchall()
                    with bound.paused():  # a broker's pace is not the database's
                        more = batch.run(rows)
                _record(cursor, self.table, batch, now())
        else:
            more = True
            while more:
                with self._cursor() as cursor:
                    cursor.execute(self.table.unpublished, (batch.after, limit))
                    rows = cursor.fetchall()
                more = batch.run(rows)
            if batch.published or batch.failed:
                with self._transaction() as cursor:
                    _record(cursor, self.table, batch, now())
        return batch

    def parked(self) -> list[ParkedMessage]:
        """Return the parked messages, in id order."""
        if not self.table.parking:
            return []  # a table of an older release, not upgraded yet: none can be parked
        # psycopg: in a transaction of its own, so a given connection is not left in one.
        postgres = self.table.dialect == "postgresql"
        reading = self._transaction() if postgres else self._cursor()
        with self._bounded(), reading as cursor:
            cursor.execute(self.table.parked)
            rows = cursor.fetchall()
        return [
            ParkedMessage(
                int(row_id), str(message), str(topic), int(attempts), str(error), float(at)
            )
            for row_id, message, topic, attempts, error, at in rows
        ]

    def requeue(self, message_ids: Iterable[str]) -> int:
        """Put the parked messages of `message_ids` back in line; return how many were."""
        requeued = 0
        if not self.table.parking:
            return requeued
        with self._bounded(), self._transaction() as cursor:
            for message_id in message_ids:
                cursor.execute(self.table.requeue, (message_id,))
                requeued += max(int(cursor.rowcount), 0)
        return requeued

    def purge(self, before: float, chunk: int, chunks: int) -> int:
        """Delete the messages published before `before`, `chunk` at a time, each chunk in a
        short transaction of its own (under the deadline), until a chunk finds fewer or
        `chunks` ran; return how many were deleted. Between chunks, the app's transactions
        take the write lock (SQLite), and each chunk is bounded by `read_timeout` (PostgreSQL)."""
        purged = 0
        for _ in range(chunks):
            with self._bounded(), self._transaction() as cursor:
                cursor.execute(self.table.purge, (before, chunk))
                deleted = max(int(cursor.rowcount), 0)
            purged += deleted
            if deleted < chunk:
                break
        return purged

    def close(self) -> None:
        """Close the connection if the relay opened it."""
        if self._deadline is not None:
            self._deadline.close()
        if self.owned:
            self.connection.close()

    def _bounded(self) -> _Bound:
        """Bound what runs inside on the database (BEGIN, statements, COMMIT) by the deadline;
        `paused()` lifts it for a while."""
        return _Bound(self._deadline, self.connection)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor that reads tuples, whatever row factory the connection has."""
        if self.table.dialect == "postgresql":
            from psycopg.rows import tuple_row  # noqa: PLC0415 - psycopg is optional

            cursor = self.connection.cursor(row_factory=tuple_row)
        else:
            cursor = self.connection.cursor()
            cursor.row_factory = None
        try:
            yield cursor
        finally:
            cursor.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A write transaction: `connection.transaction()` on psycopg, `BEGIN IMMEDIATE` on
        SQLite (whatever the connection's isolation mode)."""
        if self.table.dialect == "postgresql":
            with self.connection.transaction(), self._cursor() as cursor:
                yield cursor
            return
        with self._cursor() as cursor:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")


class _Bound:
    """The deadline armed over a block, except while `paused`; disarmed whatever happens."""

    def __init__(self, deadline: ReadDeadline | None, connection: Any) -> None:
        self._deadline, self._connection = deadline, connection
        self._armed: Armed | None = None

    def __enter__(self) -> _Bound:
        self._arm()
        return self

    def __exit__(self, _type: object, error: BaseException | None, _tb: object) -> None:
        deadline = self._deadline
        if self._disarm() and deadline is not None and isinstance(error, Exception):
            raise unavailable(deadline.timeout) from error  # cut under the statement

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._disarm()
        try:
            yield
        finally:
            self._arm()

    def _arm(self) -> None:
        if self._deadline is not None:
            self._armed = self._deadline.arm(self._connection)

    def _disarm(self) -> bool:
        """Disarm; return whether the deadline cut the connection."""
        armed, self._armed = self._armed, None
        return armed is not None and self._deadline is not None and self._deadline.disarm(armed)


def _record(cursor: Any, table: OutboxTable, batch: Batch, now: float) -> None:
    """Mark the published messages, count the failures, park the parked ones."""
    writes = (
        (table.mark_published, [(now, row_id) for row_id in batch.published]),
        (table.mark_failed, batch.failed if table.parking else []),
        (table.mark_parked, [(now, parked.message.id) for parked in batch.parked]),
    )
    for statement, rows in writes:
        if rows:
            cursor.executemany(statement, rows)


def _row(cursor: Any, statement: str) -> tuple[Any, ...]:
    """Run a statement that reads one row; return it."""
    cursor.execute(statement)
    return tuple(cursor.fetchone())


def open_source(store: object, table: str | None = None) -> OutboxSource:
    """Return the outbox source of a store URL or of a driver connection.

    Args:
        store: `sqlite:///path.db` or `postgresql://...` (the store's URL: its `table` option
            names the records table), or a `sqlite3.Connection` or psycopg `Connection`.
        table: the records table (default: the URL's `table`, else `retrysafe_records`).
    """
    if drivers.is_sqlite_connection(store):
        return OutboxSource(store, OutboxTable(outbox_table(table or DEFAULT_TABLE), "sqlite"))
    if drivers.is_psycopg_connection(store):
        name = outbox_table(table or DEFAULT_TABLE)
        return OutboxSource(store, OutboxTable(name, "postgresql"))
    if not isinstance(store, str):
        raise TypeError(
            f"Expected a store URL, a sqlite3.Connection or a psycopg Connection, not {store!r}."
        )
    parts = urlsplit(store)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    records = table or options.get("table") or DEFAULT_TABLE
    if parts.scheme == "sqlite":
        path = unquote(parts.path[1:])
        if parts.netloc or not path:
            raise ConfigurationError(f"An SQLite store URL is sqlite:///path/to.db, not {store!r}.")
        timeout = float(options.get("timeout", _SQLITE_TIMEOUT))
        lite = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        return OutboxSource(lite, OutboxTable(outbox_table(records), "sqlite"), owned=True)
    if parts.scheme in ("postgresql", "postgres"):
        try:
            import psycopg  # noqa: PLC0415 - the postgres extra

            from retrysafe.stores._sql.postgres_connection import parse_url  # noqa: PLC0415
        except ImportError as error:
            from retrysafe._extras import missing_extra  # noqa: PLC0415

            raise missing_extra("The outbox relay on PostgreSQL", "postgres", error) from error
        conninfo, parsed = parse_url(backend_url(store))
        connection = psycopg.connect(
            conninfo, autocommit=True, connect_timeout=parsed.connect_timeout_seconds
        )
        name = outbox_table(table or parsed.table)
        deadline = ReadDeadline(parsed.read_timeout)
        return OutboxSource(
            connection, OutboxTable(name, "postgresql"), owned=True, deadline=deadline
        )
    raise ConfigurationError(
        f"The outbox relay reads sqlite:// or postgresql:// stores, not {parts.scheme!r}."
    )
