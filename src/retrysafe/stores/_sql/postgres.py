"""The PostgreSQL records table: its statements rendered for one table, and its rows.

Shared by both faces of the PostgreSQL store and by the transactional mode, which all run these
statements through `stores/_async/postgres_records.py` (and its generated sync twin). Nothing
here does I/O. What every SQL table has alike (a claim's parameters, a holder's, a listing's
filters, the record in a row) is `stores/_sql/__init__.py`'s, re-exported for the primitives.

Identity parts, the fingerprint and the recovery point are stored as BYTEA through
`encode_part` (PostgreSQL text cannot hold NUL), so any string round-trips; the primary key is
`Identity.digest()`. Times are double precision seconds from the caller's clock, passed in as
parameters and never read from the database's `now()`, so an injected clock rules everywhere.
The table name is the one identifier spliced into the statements: it is validated, then quoted
with `psycopg.sql.Identifier`; every value is a bound parameter (B34).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Final

from psycopg import sql

from retrysafe.stores._sql import (
    RECORD_COLUMNS,
    checked_table_name,
    claim_params,
    derived_name,
    held_params,
    identity_params,
    listing_filters,
    record_from_row,
)
from retrysafe.stores._sql import postgres_statements as text
from retrysafe.stores.base import Listing

__all__ = [
    "RecordTable",
    "claim_params",
    "held_params",
    "identity_params",
    "list_query",
    "record_from_row",
    "record_table",
    "validate_table",
]

# PostgreSQL identifiers are at most 63 bytes; longer ones are silently truncated, which could
# merge two tables' indexes or channels, so the table name is refused instead.
_MAX_IDENTIFIER: Final = 63


def validate_table(name: str) -> str:
    """Return `name` if it is a safe, untruncated table name; raise ConfigurationError if not."""
    return checked_table_name(name, longest=_MAX_IDENTIFIER)


@dataclass(frozen=True, slots=True)
class RecordTable:
    """Every statement on one records table, rendered once with the table name quoted.

    Statements are bytes, ready to send, and take named parameters; `record_from_row` reads the
    record columns they return, in `RECORD_COLUMNS` order. `columns` stays composable, for
    `list_query`.

    Attributes:
        name: the table name.
        channel: the LISTEN/NOTIFY channel on which completions, releases and deletes of a
            watched record announce its id.
        deleted_channel: the channel on which every delete announces the record's id, for
            the replay caches of every process.
        schema_lock: the advisory lock key that serializes schema creation on this table.
    """

    name: str
    channel: str
    deleted_channel: str
    schema_lock: int
    table_exists: bytes
    lock_schema: bytes
    create_schema: tuple[bytes, ...]
    claim: bytes
    claim_or_get: bytes
    get: bytes
    watch: bytes
    complete: bytes
    complete_lean: bytes
    release: bytes
    renew: bytes
    checkpoint: bytes
    delete: bytes
    purge: bytes
    stats: bytes
    listen: bytes
    unlisten: bytes
    columns: sql.Composed

    @classmethod
    def for_table(cls, name: str) -> RecordTable:
        """Compose the statements for table `name` (validated first)."""
        validate_table(name)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in RECORD_COLUMNS)
        # The record without its outcome, for a caller that has the outcome already: echoing a
        # large outcome back costs about as much as sending it.
        lean = sql.SQL(", ").join(
            sql.SQL("NULL::bytea") if c == "outcome" else sql.Identifier(c) for c in RECORD_COLUMNS
        )
        table = sql.Identifier(name)
        fields = {
            "table": table,
            "columns": columns,
            "held": sql.SQL(text.HELD),
            "claim_into": sql.SQL(text.CLAIM_INTO).format(table=table),
            "claim_row": sql.SQL(text.CLAIM_ROW),
            "take_over": sql.SQL(text.TAKE_OVER).format(columns=columns),
        }

        def compose(template: str, **extra: sql.Composable) -> bytes:
            # Rendered and encoded once, here: psycopg renders a Composed again at every
            # execution (15 to 30 us of CPU a statement for one of many parts) and encodes it,
            # then hashes the new bytes to find its parsed form; bytes it takes as they are, and
            # a bytes object keeps its hash. The only identifiers are validated ASCII names, so
            # their quoting needs no connection, and ASCII is the same in every client encoding.
            return sql.SQL(template).format(**fields, **extra).as_string().encode("ascii")

        channel = derived_name(name, "settled")
        digest = hashlib.sha256(f"retrysafe-schema:{name}".encode()).digest()
        return cls(
            name=name,
            channel=channel,
            deleted_channel=derived_name(name, "deleted"),
            schema_lock=int.from_bytes(digest[:8], "big", signed=True),
            table_exists=compose(text.TABLE_EXISTS),
            lock_schema=compose("SELECT pg_advisory_xact_lock(%(lock)s)"),
            create_schema=(
                compose(text.CREATE_TABLE),
                compose(text.ADD_WATCHED, regclass=sql.Literal(f'"{name}"')),
                compose(
                    "CREATE INDEX IF NOT EXISTS {index} ON {table} (expires_at)",
                    index=sql.Identifier(derived_name(name, "expires_at")),
                ),
                compose(
                    "CREATE INDEX IF NOT EXISTS {index} ON {table} (created_at)",
                    index=sql.Identifier(derived_name(name, "created_at")),
                ),
            ),
            claim=compose(text.CLAIM),
            claim_or_get=compose(text.CLAIM_OR_GET),
            get=compose(text.GET),
            watch=compose(text.WATCH),
            complete=compose(text.COMPLETE, selected=columns),
            complete_lean=compose(text.COMPLETE, selected=lean),
            release=compose(text.RELEASE),
            renew=compose(text.RENEW),
            checkpoint=compose(text.CHECKPOINT),
            delete=compose(text.DELETE),
            purge=compose(text.PURGE),
            stats=compose(text.STATS),
            listen=compose("LISTEN {channel}", channel=sql.Identifier(channel)),
            unlisten=compose("UNLISTEN {channel}", channel=sql.Identifier(channel)),
            columns=columns,
        )

    def quoted_name(self) -> str:
        """Return the table name quoted for `to_regclass` (safe: the name was validated)."""
        return f'"{self.name}"'


@functools.lru_cache(maxsize=64)
def record_table(name: str) -> RecordTable:
    """Return the statements for table `name`, composed once per process and table."""
    return RecordTable.for_table(name)


def list_query(
    table: RecordTable, listing: Listing, *, now: float
) -> tuple[sql.Composed, dict[str, Any]]:
    """Return the listing statement and its parameters: live records, newest first."""
    conditions, params = listing_filters(listing, "%({})s")
    query = sql.SQL(
        "SELECT {columns} FROM {table} WHERE {where} ORDER BY created_at DESC, id LIMIT %(limit)s"
    ).format(
        columns=table.columns,
        table=sql.Identifier(table.name),
        where=sql.SQL(" AND ".join(["expires_at > %(now)s", *conditions])),
    )
    return query, {**params, "now": now, "limit": max(0, listing.limit)}
