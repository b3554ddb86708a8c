"""The MySQL/MariaDB records table: its statements rendered for one table, and its rows.

Shared by both faces of the MySQL store and by transactional mode on MySQL, which all run these
statements through `stores/_async/mysql_records.py` (and its generated sync twin). Nothing here
does I/O or imports a driver.

Identity parts, the fingerprint and the recovery point are stored as MEDIUMBLOB through
`encode_part`, so any string round-trips (NUL, lone surrogates) whatever the connection's
character set; the primary key is `Identity.digest()`. Times are DOUBLE seconds from the
caller's clock, passed in as parameters and never read from the database's `NOW()`, so an
injected clock rules everywhere (a DOUBLE holds a Python float exactly, both ways). The table
name is the one identifier spliced into the statements: it is validated, then quoted with
backticks; every value is a parameter the driver escapes (B34).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from retrysafe._errors import ConfigurationError
from retrysafe._record import Identity, Record
from retrysafe.stores._sql import RECORD_COLUMNS, record_from_columns
from retrysafe.stores._sql import mysql_statements as text
from retrysafe.stores.base import Listing, encode_part, new_token

__all__ = [
    "MySQLTable",
    "claim_params",
    "held_params",
    "list_query",
    "mysql_table",
    "record_from_row",
    "render",
    "validate_table",
]

# MySQL identifiers are at most 64 characters; ASCII letters, digits and underscores only, so
# the name needs no escaping inside backticks and means the same on every server.
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def validate_table(name: str) -> str:
    """Return `name` if it is a safe table name; raise ConfigurationError if not."""
    if not _TABLE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"Invalid table name {name!r}: use 1 to 64 ASCII letters, digits and underscores, "
            "not starting with a digit."
        )
    return name


def _quoted(column: str) -> str:
    return "`key`" if column == "key" else column  # KEY is a reserved word


@dataclass(frozen=True, slots=True)
class MySQLTable:
    """Every statement on one records table, rendered once with the table name quoted.

    Statements take `%(name)s` parameters; `record_from_row` reads the record columns they
    return, in `RECORD_COLUMNS` order.

    Attributes:
        name: the table name.
    """

    name: str
    table_exists: str
    create_schema: tuple[str, ...]
    claim: str
    claim_read: str
    complete: str
    lean_read: str
    release: str
    renew: str
    checkpoint: str
    held_read: str
    get: str
    delete: str
    purge: str
    stats: str
    columns: str

    @classmethod
    def for_table(cls, name: str) -> MySQLTable:
        """Render the statements for table `name` (validated first)."""
        validate_table(name)
        columns = ", ".join(_quoted(c) for c in RECORD_COLUMNS)
        lean = ", ".join("NULL" if c == "outcome" else _quoted(c) for c in RECORD_COLUMNS)
        fields = {"table": f"`{name}`", "columns": columns, "lean": lean, "held": text.HELD}

        def render(template: str) -> str:
            return template.format(**fields).strip()

        return cls(
            name=name,
            table_exists=render(text.TABLE_EXISTS),
            create_schema=(render(text.CREATE_TABLE),),
            claim=render(text.CLAIM),
            claim_read=render(text.CLAIM_READ),
            complete=render(text.COMPLETE),
            lean_read=render(text.LEAN_READ),
            release=render(text.RELEASE),
            renew=render(text.RENEW),
            checkpoint=render(text.CHECKPOINT),
            held_read=render(text.HELD_READ),
            get=render(text.GET),
            delete=render(text.DELETE),
            purge=render(text.PURGE),
            stats=render(text.STATS),
            columns=columns,
        )


@functools.lru_cache(maxsize=64)
def mysql_table(name: str) -> MySQLTable:
    """Return the statements for table `name`, rendered once per process and table."""
    return MySQLTable.for_table(name)


def list_query(table: MySQLTable, listing: Listing, *, now: float) -> tuple[str, dict[str, Any]]:
    """Return the listing statement and its parameters: live records, newest first."""
    conditions = ["expires_at > %(now)s"]
    params: dict[str, Any] = {"now": now, "limit": max(0, listing.limit)}
    if listing.namespace is not None:
        conditions.append("namespace = %(namespace)s")
        params["namespace"] = encode_part(listing.namespace)
    if listing.scope is not None:
        conditions.append("scope = %(scope)s")
        params["scope"] = encode_part(listing.scope)
    if listing.state is not None:
        conditions.append("state = %(state)s")
        params["state"] = listing.state.value
    if listing.created_before is not None:
        conditions.append("created_at < %(created_before)s")
        params["created_before"] = listing.created_before
    query = (
        f"SELECT {table.columns} FROM `{table.name}` WHERE {' AND '.join(conditions)}"  # noqa: S608 - a validated name, fixed conditions
        " ORDER BY created_at DESC, id LIMIT %(limit)s"
    )
    return query, params


def record_from_row(row: Sequence[Any]) -> Record:
    """Build a Record from the first columns of a row, in `RECORD_COLUMNS` order."""
    return record_from_columns(row[: len(RECORD_COLUMNS)])


def claim_params(
    identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
) -> dict[str, Any]:
    """Return the parameters of one claim at `now`, with a fresh fencing token."""
    return {
        "id": identity.digest(),
        "namespace": encode_part(identity.namespace),
        "scope": encode_part(identity.scope),
        "key": encode_part(identity.key),
        "fingerprint": encode_part(fingerprint),
        "token": new_token(),
        "now": now,
        "lease_expires_at": now + lease,
        "expires_at": now + lease + retention,
    }


def held_params(identity: Identity, token: str, now: float, **more: Any) -> dict[str, Any]:
    """Return the parameters of a statement that acts only for the token holder (`HELD`)."""
    return {"id": identity.digest(), "token": token, "now": now, **more}


def render(conn: Any, query: str, params: dict[str, Any]) -> str:
    """Return `query` with its `%(name)s` parameters written in as SQL literals (B34).

    Bytes become hexadecimal literals (`X'00ff'`), which mean the same whatever the session's
    `sql_mode` (`NO_BACKSLASH_ESCAPES` included) and character set; every other value is
    escaped by the connection, as the driver itself would. Not the driver's own formatting:
    aiomysql's escapes bytes with a function PyMySQL 1.2 no longer has.
    """
    return query % {
        name: f"X'{value.hex()}'" if isinstance(value, bytes) else conn.escape(value)
        for name, value in params.items()
    }
