"""The MySQL/MariaDB records table: its statements rendered for one table, and its rows.

Shared by both faces of the MySQL store and by transactional mode on MySQL, which all run these
statements through `stores/_async/mysql_records.py` (and its generated sync twin). Nothing here
does I/O or imports a driver. What every SQL table has alike (a claim's parameters, a holder's,
a listing's filters, the record in a row) is `stores/_sql/__init__.py`'s, re-exported for the
primitives.

Identity parts, the fingerprint and the recovery point are stored as MEDIUMBLOB through
`encode_part`, so any string round-trips (NUL, lone surrogates) whatever the connection's
character set; the primary key is `Identity.digest()`. Times are DOUBLE seconds from the
caller's clock, passed in as parameters and never read from the database's `NOW()`, so an
injected clock rules everywhere (a DOUBLE holds a Python float exactly, both ways). The table
name is the one identifier spliced into the statements: it is validated, then quoted with
backticks; every value is a parameter the driver escapes (B34).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Final

from retrysafe.stores._sql import (
    RECORD_COLUMNS,
    checked_table_name,
    claim_params,
    done_record,
    held_params,
    listing_filters,
    new_record,
    record_from_row,
    record_of,
)
from retrysafe.stores._sql import mysql_statements as text
from retrysafe.stores.base import Listing

__all__ = [
    "MySQLTable",
    "claim_params",
    "counts_changed_rows",
    "done_record",
    "held_params",
    "list_query",
    "mysql_table",
    "new_record",
    "record_from_row",
    "record_of",
    "render",
    "validate_table",
]

_CLIENT_FOUND_ROWS: Final = 2  # the protocol's capability flag, as PyMySQL's CLIENT.FOUND_ROWS
_LONGEST_NAME: Final = 64  # MySQL's identifiers are at most 64 characters
# The fields of `MySQLTable` that are not statements rendered from a template of their name.
_NOT_TEMPLATES: Final = frozenset({"name", "create_schema", "columns"})


def validate_table(name: str) -> str:
    """Return `name` if it is a safe table name; raise ConfigurationError if not."""
    return checked_table_name(name, longest=_LONGEST_NAME)


def _quoted(column: str) -> str:
    return "`key`" if column == "key" else column  # KEY is a reserved word


@dataclass(frozen=True, slots=True)
class MySQLTable:
    """Every statement on one records table, rendered once with the table name quoted.

    Statements take `%(name)s` parameters; `record_from_row` reads the record columns they
    return, in `RECORD_COLUMNS` order (`record_of` those after the identity's parts).

    Attributes:
        name: the table name.
    """

    name: str
    table_exists: str
    create_schema: tuple[str, ...]
    insert_new: str
    claim: str
    claim_read: str
    rival_read: str
    latest_read: str
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
        """Render the statements for table `name` (validated first).

        Each statement is the template of `mysql_statements.py` named as its field in capitals
        (`claim` from `CLAIM`), so no field can get another's text; the schema is `CREATE_TABLE`.
        """
        validate_table(name)
        columns = ", ".join(_quoted(c) for c in RECORD_COLUMNS)
        known = ", ".join(RECORD_COLUMNS[3:])  # after the identity's parts
        fields = {"table": f"`{name}`", "columns": columns, "known": known, "held": text.HELD}

        def render(template: str) -> str:
            return template.format(**fields).strip()

        statements = {
            field.name: render(getattr(text, field.name.upper()))
            for field in dataclasses.fields(cls)
            if field.name not in _NOT_TEMPLATES
        }
        create_schema = (render(text.CREATE_TABLE),)
        return cls(name=name, create_schema=create_schema, columns=columns, **statements)


@functools.lru_cache(maxsize=64)
def mysql_table(name: str) -> MySQLTable:
    """Return the statements for table `name`, rendered once per process and table."""
    return MySQLTable.for_table(name)


def list_query(table: MySQLTable, listing: Listing, *, now: float) -> tuple[str, dict[str, Any]]:
    """Return the listing statement and its parameters: live records, newest first."""
    conditions, params = listing_filters(listing, "%({})s")
    where = " AND ".join(["expires_at > %(now)s", *conditions])
    query = (
        f"SELECT {table.columns} FROM `{table.name}` WHERE {where}"  # noqa: S608 - a validated name, fixed conditions
        " ORDER BY created_at DESC, id LIMIT %(limit)s"
    )
    return query, {**params, "now": now, "limit": max(0, listing.limit)}


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


def counts_changed_rows(conn: Any) -> bool:
    """Return whether `conn` (PyMySQL's or aiomysql's) reports the rows a statement changed,
    not those it found: without CLIENT_FOUND_ROWS, as both drivers connect by default."""
    return not getattr(conn, "client_flag", _CLIENT_FOUND_ROWS) & _CLIENT_FOUND_ROWS
