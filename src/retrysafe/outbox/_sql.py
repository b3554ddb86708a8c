"""The outbox table's statements, for SQLite and PostgreSQL, without I/O.

    id            the row's order of insertion: the relay publishes in this order
    message_id    the derived id, unique: a block that runs again cannot add a message twice
    topic         the routing key
    payload       the body (BLOB / BYTEA)
    headers       a JSON object of str to str (TEXT / JSONB)
    created_at    seconds since the epoch, when the transaction wrote it
    published_at  NULL until the relay's publisher confirmed it; purged after the retention

The partial index on unpublished rows keeps the relay's scan short however many published rows
wait for their purge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Dialect", "OutboxTable"]

Dialect = Literal["sqlite", "postgresql"]

_COLUMNS: Final = {
    "sqlite": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "TEXT", "REAL"),
    "postgresql": ("BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "BYTEA", "JSONB", "FLOAT8"),
}
_MARKS: Final = {"sqlite": "?", "postgresql": "%s"}


@dataclass(frozen=True, slots=True)
class OutboxTable:
    """One outbox table's statements in one SQL dialect.

    Args:
        name: the table's name, checked by `outbox_table` (letters, digits, underscores).
        dialect: `sqlite` or `postgresql`.
    """

    name: str
    dialect: Dialect

    @property
    def mark(self) -> str:
        """The driver's placeholder: `?` for sqlite3, `%s` for psycopg."""
        return _MARKS[self.dialect]

    @property
    def create(self) -> tuple[str, ...]:
        """The statements that create the table and its indexes unless they exist."""
        key, blob, json, time = _COLUMNS[self.dialect]
        # Identifiers are checked by `outbox_table`; SQL cannot bind them.
        return (
            f'CREATE TABLE IF NOT EXISTS "{self.name}" ('
            f"id {key}, message_id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, "
            f"payload {blob} NOT NULL, headers {json} NOT NULL, created_at {time} NOT NULL, "
            f"published_at {time})",
            f'CREATE INDEX IF NOT EXISTS "{self.name}_unpublished" ON "{self.name}" (id) '
            "WHERE published_at IS NULL",
            f'CREATE INDEX IF NOT EXISTS "{self.name}_published" ON "{self.name}" '
            "(published_at) WHERE published_at IS NOT NULL",
        )

    @property
    def exists(self) -> str:
        """PostgreSQL: one row, true if the table exists (`to_regclass` of the name)."""
        return "SELECT to_regclass(%s) IS NOT NULL"

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
        """Read up to N unpublished messages in id order; on PostgreSQL, lock them and skip the
        rows another relay has locked, so relays share the work."""
        lock = " FOR UPDATE SKIP LOCKED" if self.dialect == "postgresql" else ""
        return (
            "SELECT id, message_id, topic, payload, headers, created_at "  # noqa: S608
            f'FROM "{self.name}" WHERE published_at IS NULL ORDER BY id LIMIT {self.mark}{lock}'
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
        """Delete the messages published before a time."""
        return (
            f'DELETE FROM "{self.name}" '  # noqa: S608
            f"WHERE published_at IS NOT NULL AND published_at < {self.mark}"
        )
