"""The pure part of the idempotent write helpers: checked identifiers and their statements.

`insert_if_absent`, `update_by_key` and `delete_by_key` (`_async/writes.py` and its generated
sync twin) build their statements here and run them through an executor of the caller's
driver. Table and column names are checked and quoted; every value is a bound parameter (B34).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from retrysafe._errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Table

    TableRef: TypeAlias = str | Table | type[object]
    """A table's name, or with a session a SQLAlchemy `Table` or a mapped class."""

__all__ = [
    "INSERT_ATTEMPTS",
    "Inserted",
    "Row",
    "delete_sql",
    "insert_sql",
    "one_row",
    "paramstyle_mark",
    "select_sql",
    "table_name",
    "unique_values",
    "update_sql",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
INSERT_ATTEMPTS = 3

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class Inserted:
    """What `insert_if_absent` found or made.

    Attributes:
        row: the row with the unique key, column name to value.
        inserted: whether this call inserted it (False: it was there already).
    """

    row: Row
    inserted: bool


def _quote(name: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"{name!r} is not a plain SQL identifier: use ASCII letters, digits and underscores."
        )
    return f'"{name}"'


def table_name(table: object) -> str:
    """Return the quoted table name of a name, a SQLAlchemy `Table` or a mapped class."""
    if isinstance(table, str):
        return ".".join(_quote(part) for part in table.split("."))
    local = getattr(table, "__table__", table)  # a declarative class maps to its Table
    name, schema = getattr(local, "name", None), getattr(local, "schema", None)
    if not isinstance(name, str):
        raise ConfigurationError(f"Expected a table name, Table or mapped class, not {table!r}.")
    return _quote(name) if schema is None else f"{_quote(schema)}.{_quote(name)}"


def _columns(values: Mapping[str, object], what: str) -> list[str]:
    if not values:
        raise ConfigurationError(f"{what} must name at least one column.")
    return [_quote(column) for column in values]


def _key_columns(key: Mapping[str, object]) -> list[str]:
    columns = _columns(key, "The unique key")
    missing = [name for name, value in key.items() if value is None]
    if missing:
        # NULL never equals NULL, and unique constraints let NULLs repeat.
        raise ConfigurationError(f"Unique-key columns cannot be NULL: {missing}.")
    return columns


def _where(columns: Sequence[str], mark: str) -> str:
    return " AND ".join(f"{column} = {mark}" for column in columns)


# The statements. Identifiers were checked and quoted by `_quote`; values are parameters.


def insert_sql(table: str, values: Mapping[str, object], unique: Sequence[str], mark: str) -> str:
    """Return INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING *."""
    columns = ", ".join(_columns(values, "The values"))
    marks = ", ".join(mark for _ in values)
    conflict = ", ".join(_quote(column) for column in unique)
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING *"
    )


def select_sql(table: str, key: Mapping[str, object], mark: str) -> str:
    """Return the SELECT of the rows that `key` names."""
    return f"SELECT * FROM {table} WHERE {_where(_key_columns(key), mark)}"  # noqa: S608


def update_sql(
    table: str, key: Mapping[str, object], values: Mapping[str, object], mark: str
) -> str:
    """Return the UPDATE that sets `values` on the rows `key` names, returning them."""
    assignments = ", ".join(f"{column} = {mark}" for column in _columns(values, "The values"))
    where = _where(_key_columns(key), mark)
    return f"UPDATE {table} SET {assignments} WHERE {where} RETURNING *"  # noqa: S608


def delete_sql(table: str, key: Mapping[str, object], mark: str) -> str:
    """Return the DELETE of the rows `key` names, returning them."""
    return f"DELETE FROM {table} WHERE {_where(_key_columns(key), mark)} RETURNING *"  # noqa: S608


def unique_values(values: Mapping[str, object], unique: Sequence[str]) -> dict[str, object]:
    """Return the values of the `unique` columns, refusing a `unique` that cannot work."""
    if isinstance(unique, str) or not unique:
        raise ConfigurationError("unique is a sequence of column names, such as ('email',).")
    absent = [column for column in unique if column not in values]
    if absent:
        raise ConfigurationError(f"The unique-key columns {absent} need values.")
    return {column: values[column] for column in unique}


def one_row(rows: list[Row], what: str) -> Row | None:
    """Return the one row a unique key matched, None for none, or raise for several."""
    if len(rows) > 1:
        raise StoreError(
            f"The key matched {len(rows)} rows in {what}, so it is not a unique key; "
            "roll back the transaction."
        )
    return rows[0] if rows else None


def paramstyle_mark(paramstyle: str) -> str:
    """Return the placeholder of a DB-API paramstyle the helpers support."""
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
    if paramstyle not in marks:
        raise ConfigurationError(f"The write helpers do not support paramstyle {paramstyle!r}.")
    return marks[paramstyle]
