"""The resumable table: each operation's stored request and the completer's attempts at it.

It sits next to the records table (`<table>_resumable`), one row per record the registry ran,
under the same primary key (`Identity.digest()`). The row is written in the claim's
transaction and deleted in the transaction that stores the outcome, so it lives exactly as
long as its operation is unfinished. Identity parts and the fingerprint are stored as bytes
(`encode_part`), as in the records table; every value is a bound parameter (B34), and the one
spliced identifier, the table name, is validated by the records table's own rules first.

On PostgreSQL a completer locks the row it works on `FOR UPDATE SKIP LOCKED`, so completers on
several machines pass over each other's rows instead of waiting on them; on SQLite every write
transaction holds the database's write lock, which serializes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from retrysafe._record import Identity, Record
from retrysafe.stores.base import decode_part, encode_part
from retrysafe.transactions._dispatch import sync_executor
from retrysafe.transactions._write_sql import Row

__all__ = ["Dialect", "ResumableRow", "ResumableTable", "side_table_name"]

Dialect = Literal["sqlite", "postgresql"]
_SUFFIX: Final = "resumable"
# PostgreSQL tables found to exist, by (host, port, database, table): checked once per process.
_ready: set[tuple[object, ...]] = set()
_COLUMNS: Final = "namespace, scope, key, fingerprint, request, attempts, attention_at, last_error"

_CREATE: Final = """CREATE TABLE IF NOT EXISTS "{side}" (
    id           TEXT PRIMARY KEY,
    namespace    {blob} NOT NULL,
    scope        {blob} NOT NULL,
    key          {blob} NOT NULL,
    fingerprint  {blob} NOT NULL,
    request      {blob} NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    attention_at {real},
    last_error   TEXT,
    stored_at    {real} NOT NULL
)"""
# A client's claim stores (or replaces) the request: a new operation under a key whose old
# record is gone starts at zero attempts, and so does one a client took over again.
_STORE: Final = (
    'INSERT INTO "{side}" (id, {columns}, stored_at) VALUES (?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?)'
    " ON CONFLICT (id) DO UPDATE SET namespace = excluded.namespace, scope = excluded.scope,"
    " key = excluded.key, fingerprint = excluded.fingerprint, request = excluded.request,"
    " attempts = 0, attention_at = NULL, last_error = NULL, stored_at = excluded.stored_at"
)
_ROW: Final = 'SELECT {columns} FROM "{side}" WHERE id = ?'
_COUNT: Final = (
    'UPDATE "{side}" SET attempts = attempts + ?, last_error = COALESCE(?, last_error) WHERE id = ?'
)
_RESET: Final = (
    'UPDATE "{side}" SET attempts = 0, attention_at = NULL, last_error = NULL WHERE id = ?'
)
_ATTENTION: Final = 'UPDATE "{side}" SET attention_at = ? WHERE id = ?'
_DELETE: Final = 'DELETE FROM "{side}" WHERE id = ?'
_BY_KEY: Final = 'SELECT id, {columns} FROM "{side}" WHERE key = ?'
# Operations left in flight past their lease, the longest abandoned first.
_CANDIDATES: Final = (
    'SELECT s.id FROM "{side}" s JOIN "{records}" r ON r.id = s.id'
    " WHERE s.attention_at IS NULL AND s.namespace IN ({names}) AND r.state = 'in_flight'"
    " AND r.lease_expires_at <= ? AND r.expires_at > ? ORDER BY r.lease_expires_at LIMIT ?"
)
# Rows whose operation finished some other way, or whose record was deleted or expired.
_ORPHANS: Final = (
    'DELETE FROM "{side}" WHERE id IN (SELECT s.id FROM "{side}" s LEFT JOIN "{records}" r'
    " ON r.id = s.id WHERE r.id IS NULL OR r.state = 'done' OR r.expires_at <= ? LIMIT ?)"
)


def side_table_name(records: str, dialect: Dialect) -> str:
    """Return the resumable table's name next to the records table `records` (validated)."""
    if dialect == "sqlite":
        from retrysafe.stores._sql.sqlite import RecordTable  # noqa: PLC0415 - no driver

        return f"{RecordTable(records).name}_{_SUFFIX}"
    from retrysafe.stores._sql import derived_name  # noqa: PLC0415
    from retrysafe.stores._sql.postgres import validate_table  # noqa: PLC0415

    return derived_name(validate_table(records), _SUFFIX)


@dataclass(frozen=True, slots=True)
class ResumableRow:
    """One operation's stored request, and what the completer has tried."""

    identity: Identity
    fingerprint: str
    request: bytes
    attempts: int
    attention_at: float | None
    last_error: str | None


class ResumableTable:
    """The resumable table's statements on one driver connection, in its open transaction.

    Args:
        connection: a `sqlite3.Connection` or a psycopg `Connection`.
        records: the records table.
        dialect: which of the two `connection` is.
    """

    def __init__(self, connection: object, records: str, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect: Dialect = dialect
        self.records = records
        self.name = side_table_name(records, dialect)
        self._run = sync_executor(connection)

    def create(self) -> None:
        """Create the table if it is missing: on PostgreSQL under an advisory lock, so two
        first transactions at once do not both create it, and checked once per process."""
        if self.dialect == "sqlite":
            self._rows(_CREATE, [], blob="BLOB", real="REAL")
            return
        info = getattr(self.connection, "info", None)
        where = (getattr(info, "host", ""), getattr(info, "port", 0), getattr(info, "dbname", ""))
        if (*where, self.name) in _ready:
            return
        found = self._rows("SELECT to_regclass(?) IS NOT NULL AS found", [f'"{self.name}"'])
        if found and found[0]["found"]:
            _ready.add((*where, self.name))  # committed: it exists for every later transaction
            return
        lock = int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:8], "big") >> 1
        self._rows("SELECT pg_advisory_xact_lock(?)", [lock])
        self._rows(_CREATE, [], blob="BYTEA", real="DOUBLE PRECISION")

    def store(self, identity: Identity, fingerprint: str, request: bytes, now: float) -> None:
        """Store the request of a claim a client made, attempts back at zero."""
        parts = [encode_part(p) for p in (identity.namespace, identity.scope, identity.key)]
        self._rows(_STORE, [identity.digest(), *parts, encode_part(fingerprint), request, now])

    def row(self, digest: str, *, lock: bool = False) -> ResumableRow | None:
        """Return the row of record `digest`; with `lock`, locked for this transaction, or
        None when another transaction holds it (PostgreSQL's `SKIP LOCKED`)."""
        locking = " FOR UPDATE SKIP LOCKED" if lock and self.dialect == "postgresql" else ""
        rows = self._rows(_ROW + locking, [digest])
        return _row(rows[0]) if rows else None

    def count(self, digest: str, *, attempts: int, error: str | None) -> None:
        """Add `attempts` to the row's count, and keep `error` as its last one."""
        self._rows(_COUNT, [attempts, error, digest])

    def reset(self, digest: str) -> None:
        """Give the operation its attempts back and clear its attention mark."""
        self._rows(_RESET, [digest])

    def mark_attention(self, digest: str, now: float) -> None:
        """Mark the operation as needing a person: the completer leaves it alone."""
        self._rows(_ATTENTION, [now, digest])

    def delete(self, digest: str) -> None:
        """Delete the row of a finished operation."""
        self._rows(_DELETE, [digest])

    def with_key(self, key: str) -> list[ResumableRow]:
        """Return the rows whose client key is `key` (in any namespace and scope)."""
        return [_row(list(r.values())[1:]) for r in self._rows(_BY_KEY, [encode_part(key)])]

    def candidates(self, namespaces: Iterable[str], now: float, limit: int) -> list[str]:
        """Return the digests of up to `limit` operations of `namespaces` left in flight past
        their lease and not marked for a person; on PostgreSQL, skipping rows locked now."""
        names = [encode_part(n) for n in namespaces]
        if not names:
            return []
        statement = _CANDIDATES.replace("{names}", ", ".join("?" * len(names)))
        if self.dialect == "postgresql":
            statement += " FOR UPDATE OF s SKIP LOCKED"
        return [str(r["id"]) for r in self._rows(statement, [*names, now, now, limit])]

    def record(self, identity: Identity, now: float) -> Record | None:
        """Return the operation's live record, read with the records table's own statement."""
        if self.dialect == "sqlite":
            from retrysafe.stores._sql.sqlite import RecordTable  # noqa: PLC0415

            return RecordTable(self.records).get(self.connection, identity, now=now)  # type: ignore[arg-type]
        from retrysafe.stores._sql.postgres import record_table  # noqa: PLC0415 - psycopg
        from retrysafe.stores._sync.postgres_records import PostgresRecords  # noqa: PLC0415

        records = PostgresRecords(record_table(self.records))
        return records.get(self.connection, identity, now=now)  # type: ignore[arg-type]

    def delete_orphans(self, now: float, limit: int) -> None:
        """Delete up to `limit` rows whose record finished, expired or was deleted."""
        self._rows(_ORPHANS, [now, limit])

    def _rows(self, template: str, params: Sequence[object], **extra: str) -> list[Row]:
        statement = template.format(side=self.name, records=self.records, columns=_COLUMNS, **extra)
        if self.dialect == "postgresql":
            statement = statement.replace("?", "%s")
        return self._run.rows(statement, params)


def _row(values: Row | Sequence[Any]) -> ResumableRow:
    """Return a row of `_COLUMNS`, in that order."""
    found: Sequence[Any] = list(values.values()) if isinstance(values, dict) else values
    namespace, scope, key, fingerprint, request, attempts, attention_at, last_error = found
    return ResumableRow(
        identity=Identity(
            decode_part(bytes(namespace)), decode_part(bytes(scope)), decode_part(bytes(key))
        ),
        fingerprint=decode_part(bytes(fingerprint)),
        request=bytes(request),
        attempts=int(attempts),
        attention_at=None if attention_at is None else float(attention_at),
        last_error=None if last_error is None else str(last_error),
    )
