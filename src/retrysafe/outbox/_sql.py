"""The outbox table's statements, for SQLite and PostgreSQL, without I/O.

    id            the row's order of insertion: the relay publishes in this order
    message_id    the derived id, unique: a block that runs again cannot add a message twice
    topic         the routing key
    payload       the body (BLOB / BYTEA)
    headers       a JSON object of str to str (TEXT / JSONB)
    created_at    seconds since the epoch, when the transaction wrote it
    published_at  NULL until the relay's publisher confirmed it; purged after the retention
    attempts      how many times the publisher failed to publish it (0 once re-queued)
    last_error    the publisher's last error, as text (NULL while it never failed)
    parked_at     when the relay set it aside after `max_attempts` failures; NULL otherwise

The partial index on unpublished rows keeps the relay's scan short however many published rows
wait for their purge. Tables created before `attempts`, `last_error` and `parked_at` existed
get them from the relay (`missing`, `upgrades`; SQLite: `missing_column`, `added_columns`); the
app's inserts do not name them. Until it has them, the relay reads them as the first release
did (`parking=False`): no attempts counted, nothing parked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from retrysafe.stores._sql import derived_name

__all__ = ["Dialect", "OutboxTable"]

Dialect = Literal["sqlite", "postgresql"]

_COLUMNS: Final = {
    "sqlite": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TEXT", "REAL"),
    "postgresql": ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTEA", "JSONB", "FLOAT8"),
}
_MARKS: Final = {"sqlite": "?", "postgresql": "%s"}
_LONGEST: Final = 63  # characters of a PostgreSQL identifier: it cuts longer ones
_ADDED: Final = {  # the columns added after the first release, in the order they came
    "sqlite": (
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("last_error", "TEXT"),
        ("parked_at", "REAL"),
    ),
    "postgresql": (
        ("attempts", "INTEGER NOT NULL DEFAULT 0"),
        ("last_error", "TEXT"),
        ("parked_at", "FLOAT8"),
    ),
}
_SELECTED: Final = "id, message_id, topic, payload, headers, created_at, attempts"


@dataclass(frozen=True, slots=True)
class OutboxTable:
    """One outbox table's statements in one SQL dialect.

    Args:
        name: the table's name, checked by `outbox_table` (letters, digits, underscores).
        dialect: `sqlite` or `postgresql`.
        parking: whether the table has the columns that count failures and park (a table of
            an older release the relay could not upgrade yet has not).
    """

    name: str
    dialect: Dialect
    parking: bool = True

    @property
    def mark(self) -> str:
        """The driver's placeholder: `?` for sqlite3, `%s` for psycopg."""
        return _MARKS[self.dialect]

    @property
    def indexes(self) -> tuple[str, str]:
        """The names of the partial indexes on unpublished rows and on published ones:
        `T_outbox_unpublished` and `T_outbox_published`, as PostgreSQL has always cut them to
        63 characters (so an existing table's are found); where that cut makes them one name,
        or the table's own (a name of 62 or 63), names shortened with a hash instead."""
        names = (f"{self.name}_unpublished", f"{self.name}_published")
        if self.dialect == "sqlite":
            return names
        if len(self.name) < _LONGEST - 1:
            return names[0][:_LONGEST], names[1][:_LONGEST]
        return derived_name(self.name, "unpublished"), derived_name(self.name, "published")

    @property
    def create(self) -> tuple[str, ...]:
        """The statements that create the table and its indexes unless they exist."""
        key, blob, json, time = _COLUMNS[self.dialect]
        unpublished, published = self.indexes
        added = "".join(f", {name} {kind}" for name, kind in _ADDED[self.dialect])
        # Identifiers are checked by `outbox_table`; SQL cannot bind them.
        return (
            f'CREATE TABLE IF NOT EXISTS "{self.name}" ('
            f"id {key}, message_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, "
            f"payload {blob} NOT NULL, headers {json} NOT NULL, created_at {time} NOT NULL, "
            f"published_at {time}{added})",
            f'CREATE INDEX IF NOT EXISTS "{unpublished}" ON "{self.name}" (id) '
            "WHERE published_at IS NULL",
            f'CREATE INDEX IF NOT EXISTS "{published}" ON "{self.name}" '
            "(published_at) WHERE published_at IS NOT NULL",
        )

    @property
    def added_columns(self) -> tuple[tuple[str, str], ...]:
        """The columns added since the first release: (name, `ADD COLUMN` statement)."""
        return tuple(
            (name, f'ALTER TABLE "{self.name}" ADD COLUMN {name} {kind}')
            for name, kind in _ADDED[self.dialect]
        )

    @property
    def missing_column(self) -> str:
        """SQLite: one row, true if the table lacks the column named by the parameter."""
        return (
            "SELECT count(*) = 0 "  # noqa: S608
            f"FROM pragma_table_info('{self.name}') WHERE name = ?"
        )

    @property
    def missing(self) -> str:
        """PostgreSQL: one row of booleans: whether the table is missing, then each added
        column, then each of its indexes (`upgrades` takes it). Read from the catalog, which
        takes no lock on the table: a statement that changes it would, even one that finds
        there is nothing to do (`CREATE INDEX IF NOT EXISTS`, `ALTER TABLE`)."""
        checks = (
            f"{self._regclass} IS NULL",
            *(
                f"NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = {self._regclass} "
                f"AND attname = '{column}' AND NOT attisdropped)"
                for column, _ in _ADDED[self.dialect]
            ),
            *(f"to_regclass('\"{index}\"') IS NULL" for index in self.indexes),
        )
        return "SELECT " + ", ".join(checks)

    def upgrades(self, missing: Sequence[bool]) -> tuple[str, ...]:
        """PostgreSQL: the statements that make what `missing` (the row `missing` read) says
        is missing: the whole table, else its missing columns, then its missing indexes (so
        the first statement takes the strongest lock, and the others wait for none)."""
        if missing[0]:
            return self.create
        statements = (*(add for _, add in self.added_columns), *self.create[1:])
        return tuple(sql for sql, lacking in zip(statements, missing[1:], strict=True) if lacking)

    def has_parking(self, missing: Sequence[bool]) -> bool:
        """PostgreSQL: whether the table of which `missing` (the row `missing` read) says this
        has the columns that count failures and park."""
        return not any(missing[: 1 + len(_ADDED[self.dialect])])

    @property
    def held(self) -> str:
        """PostgreSQL: one row, true if another session holds a lock on the table or waits for
        one (an app's insert, a relay's batch): a schema change would queue behind it, and every
        write after it behind the change."""
        return (
            f"SELECT EXISTS (SELECT FROM pg_locks WHERE relation = {self._regclass} "  # noqa: S608
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND pid IS DISTINCT FROM pg_backend_pid())"
        )

    @property
    def exists(self) -> str:
        """PostgreSQL: one row: `found`, whether the table exists, and `committed`, whether it
        did before the open transaction. Creating a table takes an ACCESS EXCLUSIVE lock held
        to the commit: a table found while this session holds none was not created by it."""
        return (
            f"SELECT {self._regclass} IS NOT NULL AS found, "  # noqa: S608
            f"NOT EXISTS (SELECT FROM pg_locks WHERE relation = {self._regclass} "
            "AND pid = pg_backend_pid() AND mode = 'AccessExclusiveLock') AS committed"
        )

    @property
    def lock_schema(self) -> str:
        """PostgreSQL: the advisory lock, held to the commit, that makes creators take turns."""
        return "SELECT pg_advisory_xact_lock(hashtext(%s))"

    @property
    def insert(self) -> str:
        """Add one message; a message id written already (by this block) adds nothing."""
        marks = ", ".join(self.mark for _ in range(5))
        return (
            f'INSERT INTO "{self.name}" '  # noqa: S608
            f"(message_id, topic, payload, headers, created_at) VALUES ({marks}) "
            "ON CONFLICT (message_id) DO NOTHING"
        )

    @property
    def unpublished(self) -> str:
        """Read up to N messages neither published nor parked, after an id, in id order; on
        PostgreSQL, lock them and skip the rows another relay has locked, so relays share the
        work."""
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        selected, unparked = _SELECTED, "parked_at IS NULL AND "
        if not self.parking:  # a table of an older release: no failure counted, none parked
            selected, unparked = _SELECTED.replace("attempts", "0"), ""
        return (
            f'SELECT {selected} FROM "{self.name}" '  # noqa: S608
            f"WHERE published_at IS NULL AND {unparked}id > {self.mark} "
            f"ORDER BY id LIMIT {self.mark}{lock}"
        )

    @property
    def mark_failed(self) -> str:
        """Count one failed publish of a message and keep its error."""
        return (
            f'UPDATE "{self.name}" SET attempts = attempts + 1, '  # noqa: S608
            f"last_error = {self.mark} WHERE id = {self.mark} AND published_at IS NULL"
        )

    @property
    def mark_parked(self) -> str:
        """Set one message aside: the relay skips it until it is re-queued."""
        return (
            f'UPDATE "{self.name}" SET parked_at = {self.mark} '  # noqa: S608
            f"WHERE id = {self.mark} AND published_at IS NULL"
        )

    @property
    def parked(self) -> str:
        """Read the parked messages, in id order."""
        return (
            "SELECT id, message_id, topic, attempts, last_error, parked_at "  # noqa: S608
            f'FROM "{self.name}" WHERE parked_at IS NOT NULL AND published_at IS NULL '
            "ORDER BY id"
        )

    @property
    def requeue(self) -> str:
        """Put one parked message (by message id) back in line, its attempts counted afresh."""
        return (
            f'UPDATE "{self.name}" SET parked_at = NULL, attempts = 0, '  # noqa: S608
            "last_error = NULL WHERE parked_at IS NOT NULL AND published_at IS NULL "
            f"AND message_id = {self.mark}"
        )

    @property
    def mark_published(self) -> str:
        """Set one message's `published_at`."""
        return (
            f'UPDATE "{self.name}" SET published_at = {self.mark} '  # noqa: S608
            f"WHERE id = {self.mark} AND published_at IS NULL"
        )

    @property
    def purge(self) -> str:
        """Delete up to N messages published before a time: one chunk of a purge. On
        PostgreSQL, skip the rows another relay's purge has locked."""
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        return (
            f'DELETE FROM "{self.name}" WHERE id IN (SELECT id FROM "{self.name}" '  # noqa: S608
            f"WHERE published_at IS NOT NULL AND published_at < {self.mark} "
            f"LIMIT {self.mark}{lock})"
        )

    @property
    def _regclass(self) -> str:
        """PostgreSQL: the table's oid, or NULL. Quoted as the statements quote it, so a name
        with capitals is found (unquoted, `to_regclass` would fold it to lower case)."""
        return f"to_regclass('\"{self.name}\"')"
