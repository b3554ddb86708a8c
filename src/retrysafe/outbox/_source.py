"""The relay's side of the outbox table: read committed messages, mark them published, purge.

One class for both databases; what differs is the SQL (`_sql.py`) and how a transaction starts.
On PostgreSQL a batch is read `FOR UPDATE SKIP LOCKED` and marked in the same transaction,
held while the batch is published: another relay skips the locked rows, and a relay that dies
mid-batch rolls its locks back, so another publishes those rows again, with the same ids. On
SQLite the batch is read, published, then marked in a short write transaction: the write lock
is never held while a broker is waited for, and one relay runs per database file.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from retrysafe._errors import ConfigurationError
from retrysafe.outbox._messages import OutboxMessage, decode_headers, outbox_table
from retrysafe.outbox._sql import OutboxTable
from retrysafe.stores import backend_url
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.stores._sql.postgres_deadline import Armed, ReadDeadline, unavailable
from retrysafe.transactions import _drivers as drivers

__all__ = ["OutboxSource", "open_source"]

Publish = Callable[[OutboxMessage], None]
_SQLITE_TIMEOUT = 30.0


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
        self.connection = connection
        self.table = table
        self.owned = owned
        self._deadline = deadline

    def prepare(self) -> None:
        """Create the table if it is missing."""
        with self._bounded(), self._transaction() as cursor:
            if self.table.dialect == "postgresql":
                cursor.execute(self.table.lock_schema, (self.table.name,))
            for statement in self.table.create:
                cursor.execute(statement)

    def relay(self, limit: int, publish: Publish, now: Callable[[], float]) -> int:
        """Publish up to `limit` committed messages in id order; return how many were marked.

        A message is marked published only once `publish` returned for it. If `publish`
        raises, the messages before it are marked and committed, then the error propagates.
        """
        if self.table.dialect == "postgresql":
            with self._bounded() as bound, self._transaction() as cursor:
                cursor.execute(self.table.unpublished, (limit,))
                rows = cursor.fetchall()
                with bound.paused():  # a broker's pace is not the database's
                    published, error = _publish(rows, publish)
                _mark(cursor, self.table, published, now())
        else:
            with self._cursor() as cursor:
                cursor.execute(self.table.unpublished, (limit,))
                rows = cursor.fetchall()
            published, error = _publish(rows, publish)
            if published:
                with self._transaction() as cursor:
                    _mark(cursor, self.table, published, now())
        if error is not None:
            raise error
        return len(published)

    def purge(self, before: float) -> int:
        """Delete the messages published before `before`; return how many."""
        with self._bounded(), self._transaction() as cursor:
            cursor.execute(self.table.purge, (before,))
            return max(int(cursor.rowcount), 0)

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


def _publish(rows: Sequence[Any], publish: Publish) -> tuple[list[int], Exception | None]:
    """Publish `rows` in order; return the ids `publish` returned for, and its error if one
    raised (the rows after it wait for the next batch)."""
    published: list[int] = []
    for row in rows:
        try:
            publish(_message(row))
        except Exception as error:  # the caller commits the marks first, then raises it
            return published, error
        published.append(row[0])
    return published, None


def _mark(cursor: Any, table: OutboxTable, ids: list[int], now: float) -> None:
    cursor.executemany(table.mark_published, [(now, row_id) for row_id in ids])


def _message(row: Sequence[Any]) -> OutboxMessage:
    row_id, message_id, topic, payload, headers, created_at = row
    return OutboxMessage(
        int(row_id),
        str(message_id),
        str(topic),
        bytes(payload),
        decode_headers(headers),
        float(created_at),
    )


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
