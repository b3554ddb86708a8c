"""The SQLite records table: its statements, row conversion, and the primitives built on them.

Everything here is synchronous and takes an open `sqlite3.Connection`; both faces of the SQLite
store (`stores/_async/sqlite.py` and its generated sync twin) share it. No primitive here runs
BEGIN or COMMIT: the store wraps each call in `write_transaction`, and the transactional mode
runs the same calls inside the user's own transaction, so the idempotency record commits with
the business writes.

Identity parts, the fingerprint and the recovery point are stored as BLOBs through
`encode_part`, so any string round-trips (NUL, non-ASCII, lone surrogates); the primary key is
`Identity.digest()`, and every value reaches SQLite as a bound parameter (B34).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from retrysafe._engine import may_take
from retrysafe._errors import ConfigurationError, FencedError, StoreError, StoreUnavailableError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores.base import StoreStats, decode_part, encode_part, new_token

__all__ = [
    "DEFAULT_TABLE",
    "RecordTable",
    "Synchronous",
    "connect",
    "store_error",
    "write_transaction",
]

DEFAULT_TABLE: Final = "retrysafe_records"

Synchronous = Literal["full", "normal"]

# A table name is spliced into the statements (SQL cannot bind identifiers), so it is checked
# against this pattern first; the indexes' names derive from it.
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")

_COLUMNS: Final = (
    "id, namespace, scope, key, fingerprint, state, token,"
    " created_at, lease_expires_at, expires_at, outcome, recovery_point"
)
# The condition of every token-checked statement: the caller holds a live in-flight record.
_HELD: Final = "id = :id AND token = :token AND state = 'in_flight' AND expires_at > :now"

# The statements, as templates: `RecordTable` fills in {table} (checked against _TABLE_NAME),
# {columns}, {held} and {filters} (fixed fragments); every value is a bound parameter.
CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS "{table}" (
    id               TEXT PRIMARY KEY,
    namespace        BLOB NOT NULL,
    scope            BLOB NOT NULL,
    key              BLOB NOT NULL,
    fingerprint      BLOB NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
    token            TEXT NOT NULL,
    created_at       REAL NOT NULL,
    lease_expires_at REAL NOT NULL,
    expires_at       REAL NOT NULL,
    outcome          BLOB,
    recovery_point   BLOB
)"""
# purge_expired and the retention filter of every read scan by expires_at; listings sort by
# created_at, globally or within one (namespace, scope).
CREATE_INDEXES: Final = (
    'CREATE INDEX IF NOT EXISTS "{table}_expires_at" ON "{table}" (expires_at)',
    'CREATE INDEX IF NOT EXISTS "{table}_created_at" ON "{table}" (created_at)',
    'CREATE INDEX IF NOT EXISTS "{table}_scope" ON "{table}" (namespace, scope, created_at)',
)
SELECT_LIVE: Final = 'SELECT {columns} FROM "{table}" WHERE id = ? AND expires_at > ?'
SELECT_BY_ID: Final = 'SELECT {columns} FROM "{table}" WHERE id = ?'
SELECT_DONE: Final = "SELECT {columns} FROM \"{table}\" WHERE id = ? AND state = 'done'"
# Runs after SELECT_LIVE in the same write transaction: it inserts, or replaces a row that
# may_take allowed to be taken (expired lease, or past retention).
CLAIM: Final = (
    'INSERT OR REPLACE INTO "{table}" ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)'
)
COMPLETE: Final = (
    "UPDATE \"{table}\" SET state = 'done', outcome = :outcome, lease_expires_at = :now,"
    " expires_at = :expires_at WHERE {held}"
)
RELEASE: Final = 'DELETE FROM "{table}" WHERE {held}'
# A renewal that moves the lease later moves the retention end by as much, so the record
# never expires while its holder is alive.
RENEW: Final = (
    'UPDATE "{table}" SET lease_expires_at = :lease_expires_at,'
    " expires_at = expires_at + MAX(0.0, :lease_expires_at - lease_expires_at) WHERE {held}"
)
CHECKPOINT: Final = 'UPDATE "{table}" SET recovery_point = :recovery_point WHERE {held}'
DELETE: Final = 'DELETE FROM "{table}" WHERE id = ?'
# Bounded: one call deletes at most `limit` rows, so it never holds the write lock for long.
PURGE_EXPIRED: Final = (
    'DELETE FROM "{table}" WHERE rowid IN'
    ' (SELECT rowid FROM "{table}" WHERE expires_at <= ? LIMIT ?)'
)
LIST: Final = (
    'SELECT {columns} FROM "{table}" WHERE expires_at > :now{filters}'
    " ORDER BY created_at DESC, id LIMIT :limit"
)
STATS: Final = """
SELECT
    COALESCE(SUM(state = 'in_flight'), 0),
    COALESCE(SUM(state = 'done'), 0),
    COALESCE(SUM(LENGTH(outcome)), 0),
    MIN(CASE WHEN state = 'in_flight' THEN created_at END)
FROM "{table}" WHERE expires_at > ?"""

_FENCED = "This claim no longer holds the key: its lease was taken over or the record ended."

Row = tuple[Any, ...]


def record_to_row(record: Record) -> Row:
    """Return the column values of `record`, in `_COLUMNS` order."""
    identity = record.identity
    return (
        identity.digest(),
        encode_part(identity.namespace),
        encode_part(identity.scope),
        encode_part(identity.key),
        encode_part(record.fingerprint),
        record.state.value,
        record.token,
        record.created_at,
        record.lease_expires_at,
        record.expires_at,
        record.outcome,
        None if record.recovery_point is None else encode_part(record.recovery_point),
    )


def row_to_record(row: Row) -> Record:
    """Return the record stored in `row` (columns in `_COLUMNS` order)."""
    namespace, scope, key, fingerprint, state, token = row[1:7]
    created_at, lease_expires_at, expires_at, outcome, recovery_point = row[7:12]
    return Record(
        identity=Identity(decode_part(namespace), decode_part(scope), decode_part(key)),
        fingerprint=decode_part(fingerprint),
        state=State(state),
        token=token,
        created_at=created_at,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=None if outcome is None else bytes(outcome),
        recovery_point=None if recovery_point is None else decode_part(recovery_point),
    )


@dataclass(frozen=True, slots=True)
class RecordTable:
    """The records table of one SQLite database, and the store primitives on it.

    Each method takes the connection and the current time, runs its statements in whatever
    transaction the connection is in, and raises `FencedError` when the token does not hold
    the record. Methods that read then write (`claim`, and the token-checked updates that read
    the result back) must run inside a write transaction to be atomic.

    Args:
        name: the table name: letters, digits and underscores, not starting with a digit.
    """

    name: str = DEFAULT_TABLE

    def __post_init__(self) -> None:
        if not _TABLE_NAME.fullmatch(self.name) or self.name.lower().startswith("sqlite_"):
            raise ConfigurationError(
                f"SQLite table name {self.name!r} is not allowed: use up to 48 letters, digits"
                " and underscores, not starting with a digit or 'sqlite_'."
            )

    def _sql(self, template: str, filters: str = "") -> str:
        return _render(template, self.name, filters)

    def create_schema(self, connection: sqlite3.Connection) -> None:
        """Create the table and its indexes unless they exist."""
        connection.execute(self._sql(CREATE_TABLE))
        for statement in CREATE_INDEXES:
            connection.execute(self._sql(statement))

    def claim(
        self,
        connection: sqlite3.Connection,
        identity: Identity,
        fingerprint: str,
        *,
        now: float,
        lease: float,
        retention: float,
    ) -> Claim:
        """Insert or take over the record (`may_take`), or return the live one untouched."""
        existing = self.get(connection, identity, now=now)
        if existing is not None and not may_take(existing, fingerprint, now):
            return Claim(existing, acquired=False)
        # A takeover continues the same operation: it keeps the creation time and the
        # recovery point, so the new holder resumes after the last committed phase (B30).
        record = Record(
            identity=identity,
            fingerprint=fingerprint,
            state=State.IN_FLIGHT,
            token=new_token(),
            created_at=now if existing is None else existing.created_at,
            lease_expires_at=now + lease,
            expires_at=now + lease + retention,
            recovery_point=None if existing is None else existing.recovery_point,
        )
        connection.execute(self._sql(CLAIM), record_to_row(record))
        return Claim(record, acquired=True, taken_over=existing is not None)

    def complete(
        self,
        connection: sqlite3.Connection,
        identity: Identity,
        token: str,
        outcome: bytes,
        *,
        now: float,
        retention: float,
    ) -> Record:
        """Store `outcome` on the held record and mark it done."""
        values = {"outcome": outcome, "expires_at": now + retention}
        return self._update_held(
            connection, COMPLETE, identity, token=token, now=now, values=values
        )

    def release(
        self, connection: sqlite3.Connection, identity: Identity, token: str, *, now: float
    ) -> None:
        """Delete the held in-flight record."""
        self._execute_held(connection, RELEASE, identity, token=token, now=now, values={})

    def renew(
        self,
        connection: sqlite3.Connection,
        identity: Identity,
        token: str,
        *,
        now: float,
        lease: float,
    ) -> Record:
        """Extend the holder's lease to `lease` seconds from `now`."""
        values = {"lease_expires_at": now + lease}
        return self._update_held(connection, RENEW, identity, token=token, now=now, values=values)

    def checkpoint(
        self,
        connection: sqlite3.Connection,
        identity: Identity,
        token: str,
        recovery_point: str,
        *,
        now: float,
    ) -> Record:
        """Record the last committed phase on the held record."""
        values = {"recovery_point": encode_part(recovery_point)}
        return self._update_held(
            connection, CHECKPOINT, identity, token=token, now=now, values=values
        )

    def get(
        self, connection: sqlite3.Connection, identity: Identity, *, now: float
    ) -> Record | None:
        """Return the record, or None if absent or past its retention."""
        row = connection.execute(self._sql(SELECT_LIVE), (identity.digest(), now)).fetchone()
        return None if row is None else row_to_record(row)

    def done(self, connection: sqlite3.Connection, identity: Identity) -> Record | None:
        """Return the record if it is done, whatever its expiry; a read that needs no write lock.

        A done record never changes: it stays as it is until it is deleted, or replaced by a
        new claim once its retention has ended. So a claim that finds one, read outside any
        write transaction, may answer with it (a replay or a mismatch) without the write lock,
        provided the caller checks its expiry against a time read *after* this read: the
        record was then done and live at the moment of the read, which is where such a claim
        takes effect. Anything else (no record, in flight, expired) needs the locked `claim`.
        """
        rows = connection.execute(self._sql(SELECT_DONE), (identity.digest(),)).fetchall()
        return row_to_record(rows[0]) if rows else None

    def delete(self, connection: sqlite3.Connection, identity: Identity, *, now: float) -> bool:
        """Delete the record whatever its state; return whether a live one existed."""
        existed = self.get(connection, identity, now=now) is not None
        connection.execute(self._sql(DELETE), (identity.digest(),))
        return existed

    def purge_expired(self, connection: sqlite3.Connection, *, now: float, limit: int) -> int:
        """Delete at most `limit` records past their retention; return how many."""
        return connection.execute(self._sql(PURGE_EXPIRED), (now, limit)).rowcount

    def list_records(
        self,
        connection: sqlite3.Connection,
        *,
        now: float,
        namespace: str | None = None,
        scope: str | None = None,
        state: State | None = None,
        created_before: float | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Return live records matching every given filter, newest first, at most `limit`."""
        values: dict[str, object] = {"now": now, "limit": limit}
        filters = ""
        if namespace is not None:
            filters += " AND namespace = :namespace"
            values["namespace"] = encode_part(namespace)
        if scope is not None:
            filters += " AND scope = :scope"
            values["scope"] = encode_part(scope)
        if state is not None:
            filters += " AND state = :state"
            values["state"] = state.value
        if created_before is not None:
            filters += " AND created_at < :created_before"
            values["created_before"] = created_before
        rows = connection.execute(self._sql(LIST, filters), values)
        return [row_to_record(row) for row in rows]

    def stats(self, connection: sqlite3.Connection, *, now: float) -> StoreStats:
        """Return counts of live records by state, stored bytes, and the oldest in-flight claim."""
        in_flight, done, size, oldest = connection.execute(self._sql(STATS), (now,)).fetchone()
        return StoreStats(
            in_flight=in_flight, done=done, bytes_stored=size, oldest_in_flight_at=oldest
        )

    def _execute_held(
        self,
        connection: sqlite3.Connection,
        template: str,
        identity: Identity,
        *,
        token: str,
        now: float,
        values: Mapping[str, object],
    ) -> None:
        held = {"id": identity.digest(), "token": token, "now": now}
        if connection.execute(self._sql(template), {**held, **values}).rowcount == 0:
            raise FencedError(_FENCED)

    def _update_held(
        self,
        connection: sqlite3.Connection,
        template: str,
        identity: Identity,
        *,
        token: str,
        now: float,
        values: Mapping[str, object],
    ) -> Record:
        self._execute_held(connection, template, identity, token=token, now=now, values=values)
        row = connection.execute(self._sql(SELECT_BY_ID), (identity.digest(),)).fetchone()
        return row_to_record(row)


@functools.lru_cache(maxsize=128)
def _render(template: str, table: str, filters: str) -> str:
    """Return a statement template filled in; each is rendered once, not at every execution."""
    return template.format(table=table, columns=_COLUMNS, held=_HELD, filters=filters)


def connect(path: str, *, timeout: float, synchronous: Synchronous) -> sqlite3.Connection:
    """Open `path` the way the store uses it: WAL, the chosen durability, a busy timeout.

    The connection is in autocommit mode (`isolation_level=None`): transactions are explicit
    (`write_transaction`). It may be closed from another thread than the one that uses it, so
    the store can close every thread's connection at once.
    """
    connection = sqlite3.connect(
        path, timeout=timeout, isolation_level=None, check_same_thread=False
    )
    try:
        # WAL lets readers run while one writer commits, and lets processes on one machine
        # share the file. The setting is stored in the file; on a filesystem that cannot hold
        # the WAL index, SQLite keeps its rollback journal, which is slower but still correct.
        _set_wal(connection, timeout)
        # Durability is a choice per connection. FULL (the default) syncs the WAL at every
        # commit, so an acknowledged claim or outcome survives a power loss or OS crash. NORMAL
        # syncs only at checkpoints: it survives an application crash, but a power loss can
        # roll back the last commits, and a lost claim or outcome lets a retry run the effect
        # again (a second charge). Use NORMAL only where that is acceptable.
        connection.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except BaseException:
        connection.close()
        raise
    return connection


def _set_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode, retrying within `timeout` while it is busy.

    While another connection switches a new database to WAL (or recovers its WAL), the pragma
    fails with SQLITE_BUSY at once, without the busy handler: many threads opening their first
    connection together would fail, so it is retried briefly.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as error:
            code = getattr(error, "sqlite_errorcode", -1) & 0xFF
            if code != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.001)
        else:
            return


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """Run the block in one write transaction: BEGIN IMMEDIATE, COMMIT, or ROLLBACK on error.

    IMMEDIATE takes the database's write lock before the first read (waiting up to the busy
    timeout), so a read followed by a write cannot interleave with another writer's.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


# SQLite's primary result codes that mean "the database cannot be used right now", not "the
# request was wrong": locked past the busy timeout, the file cannot be opened or written.
_UNAVAILABLE = {
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_BUSY: "the database stayed locked past the busy timeout",
    sqlite3.SQLITE_LOCKED: "a table stayed locked",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
}


def store_error(error: sqlite3.Error, path: str) -> StoreError:
    """Return the retrysafe error for a sqlite3 error raised on the database at `path`."""
    # sqlite_errorcode may be an extended code (SQLITE_BUSY_SNAPSHOT); its low byte is primary.
    code = getattr(error, "sqlite_errorcode", -1) & 0xFF
    reason = _UNAVAILABLE.get(code)
    directory = os.path.dirname(path)
    if code == sqlite3.SQLITE_CANTOPEN and not os.path.isdir(directory):
        reason = f"{directory!r} is not a directory that exists (retrysafe does not create it)"
    if reason is not None:
        return StoreUnavailableError(f"SQLite store {path!r} is unavailable: {reason} ({error}).")
    return StoreError(f"SQLite store {path!r} failed: {error}.")
