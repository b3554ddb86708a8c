"""Idempotent write helpers: writes that leave the same rows however often they run (B31).

- `insert_if_absent`: insert a row unless one with the same unique key exists; either way,
  return the row that is there (`INSERT ... ON CONFLICT (key) DO NOTHING RETURNING *`, then a
  read). The database's unique constraint decides, so two racing inserts make one row.
- `update_by_key`: set columns to given values on the one row a unique key names. Setting a
  value is idempotent; an increment (`n = n + 1`) is not, so these helpers take values only.
- `delete_by_key`: delete the row a unique key names; a repeat deletes nothing.

They run in the caller's transaction and never commit: use them inside a transactional-mode
block or a phase so they commit together with the key. They take a `sqlite3` connection, a
psycopg 3 connection or a SQLAlchemy session (sync names), or a psycopg `AsyncConnection` or
an `AsyncSession` (the `a`-prefixed names). Table and column names are checked identifiers;
every value is a bound parameter (B34). `insert_if_absent`'s `unique` columns must match a
unique index or primary key of the table (SQLite and PostgreSQL both refuse otherwise).
"""

from __future__ import annotations

import re
import sqlite3
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from retrysafe._errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from typing import TypeAlias

    import psycopg
    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    SyncConnection: TypeAlias = sqlite3.Connection | psycopg.Connection[Any] | Session
    AsyncConnection: TypeAlias = psycopg.AsyncConnection[Any] | AsyncSession
    TableRef: TypeAlias = str | Table | type[object]

__all__ = [
    "Inserted",
    "adelete_by_key",
    "ainsert_if_absent",
    "aupdate_by_key",
    "delete_by_key",
    "insert_if_absent",
    "update_by_key",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_INSERT_ATTEMPTS = 3

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


def _table_name(table: object) -> str:
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


def _insert(table: str, values: Mapping[str, object], unique: Sequence[str], mark: str) -> str:
    columns = ", ".join(_columns(values, "The values"))
    marks = ", ".join(mark for _ in values)
    conflict = ", ".join(_quote(column) for column in unique)
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({marks}) "  # noqa: S608
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING *"
    )


def _select(table: str, key: Mapping[str, object], mark: str) -> str:
    return f"SELECT * FROM {table} WHERE {_where(_key_columns(key), mark)}"  # noqa: S608


def _update(table: str, key: Mapping[str, object], values: Mapping[str, object], mark: str) -> str:
    assignments = ", ".join(f"{column} = {mark}" for column in _columns(values, "The values"))
    where = _where(_key_columns(key), mark)
    return f"UPDATE {table} SET {assignments} WHERE {where} RETURNING *"  # noqa: S608


def _delete(table: str, key: Mapping[str, object], mark: str) -> str:
    return f"DELETE FROM {table} WHERE {_where(_key_columns(key), mark)} RETURNING *"  # noqa: S608


def _unique_values(values: Mapping[str, object], unique: Sequence[str]) -> dict[str, object]:
    if isinstance(unique, str) or not unique:
        raise ConfigurationError("unique is a sequence of column names, such as ('email',).")
    absent = [column for column in unique if column not in values]
    if absent:
        raise ConfigurationError(f"The unique-key columns {absent} need values.")
    return {column: values[column] for column in unique}


def _one(rows: list[Row], what: str) -> Row | None:
    if len(rows) > 1:
        raise StoreError(
            f"The key matched {len(rows)} rows in {what}, so it is not a unique key; "
            "roll back the transaction."
        )
    return rows[0] if rows else None


class _Executor(Protocol):
    mark: str

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]: ...


class _AsyncExecutor(Protocol):
    mark: str

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]: ...


class _SQLite:
    mark = "?"

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        cursor = self.connection.cursor()
        cursor.row_factory = None  # tuples, whatever the connection's row factory
        try:
            cursor.execute(statement, tuple(params))
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            cursor.close()


class _Psycopg:
    mark = "%s"

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        from psycopg.rows import dict_row  # noqa: PLC0415 - psycopg is optional

        with self.connection.cursor(row_factory=dict_row) as cursor:
            cursor.execute(statement, tuple(params))
            return list(cursor.fetchall()) if cursor.description is not None else []


class _Session:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.mark = _mark(session.get_bind().dialect.paramstyle)

    def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        # Pending ORM writes go first, so they and this statement run in the order written.
        self.session.flush()
        result = self.session.connection().exec_driver_sql(statement, tuple(params))
        return [dict(row) for row in result.mappings().all()] if result.returns_rows else []


class _AsyncPsycopg:
    mark = "%s"

    def __init__(self, connection: Any) -> None:
        self.connection = connection

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        from psycopg.rows import dict_row  # noqa: PLC0415 - psycopg is optional

        async with self.connection.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(statement, tuple(params))
            return list(await cursor.fetchall()) if cursor.description is not None else []


class _AsyncSession:
    def __init__(self, session: Any) -> None:
        self.session = session
        self.mark = _mark(session.get_bind().dialect.paramstyle)

    async def rows(self, statement: str, params: Sequence[object]) -> list[Row]:
        await self.session.flush()
        connection = await self.session.connection()
        result = await connection.exec_driver_sql(statement, tuple(params))
        return [dict(row) for row in result.mappings().all()] if result.returns_rows else []


def _mark(paramstyle: str) -> str:
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
    if paramstyle not in marks:
        raise ConfigurationError(f"The write helpers do not support paramstyle {paramstyle!r}.")
    return marks[paramstyle]


def _executor(connection: object) -> _Executor:
    if isinstance(connection, sqlite3.Connection):
        return _SQLite(connection)
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.Connection):
        return _Psycopg(connection)
    orm = sys.modules.get("sqlalchemy.orm")
    if orm is not None and isinstance(connection, orm.Session):
        return _Session(connection)
    raise TypeError(
        "Expected a sqlite3.Connection, a psycopg Connection or a SQLAlchemy Session, "
        f"not {connection!r}."
    )


def _async_executor(connection: object) -> _AsyncExecutor:
    driver = sys.modules.get("psycopg")
    if driver is not None and isinstance(connection, driver.AsyncConnection):
        return _AsyncPsycopg(connection)
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if asyncio_ext is not None and isinstance(connection, asyncio_ext.AsyncSession):
        return _AsyncSession(connection)
    raise TypeError(
        f"Expected a psycopg AsyncConnection or a SQLAlchemy AsyncSession, not {connection!r}."
    )


def insert_if_absent(
    connection: SyncConnection,
    table: TableRef,
    values: Mapping[str, object],
    *,
    unique: Sequence[str],
) -> Inserted:
    """Insert `values` unless a row with the same `unique` columns exists; return that row.

    Args:
        connection: a `sqlite3.Connection`, a psycopg `Connection` or a SQLAlchemy `Session`.
        table: the table's name, or with a session a `Table` or a mapped class.
        values: column name to value for the new row.
        unique: the columns of a unique constraint of the table, all present in `values`.
    """
    run = _executor(connection)
    name = _table_name(table)
    key = _unique_values(values, unique)
    insert, select = _insert(name, values, unique, run.mark), _select(name, key, run.mark)
    for _ in range(_INSERT_ATTEMPTS):
        rows = run.rows(insert, list(values.values()))
        if rows:
            return Inserted(rows[0], inserted=True)
        # The conflicting row may have been deleted since: try again.
        existing = _one(run.rows(select, list(key.values())), name)
        if existing is not None:
            return Inserted(existing, inserted=False)
    raise StoreError(f"The row in {name} kept changing during {_INSERT_ATTEMPTS} attempts.")


def update_by_key(
    connection: SyncConnection,
    table: TableRef,
    key: Mapping[str, object],
    values: Mapping[str, object],
) -> Row | None:
    """Set `values` on the row named by the unique `key`; return it, or None if there is none.

    Args:
        connection: a `sqlite3.Connection`, a psycopg `Connection` or a SQLAlchemy `Session`.
        table: the table's name, or with a session a `Table` or a mapped class.
        key: the unique key's columns and values.
        values: column name to the value it is set to.

    Raises:
        StoreError: `key` matched several rows (it is not unique); roll back.
    """
    run = _executor(connection)
    name = _table_name(table)
    rows = run.rows(_update(name, key, values, run.mark), [*values.values(), *key.values()])
    return _one(rows, name)


def delete_by_key(connection: SyncConnection, table: TableRef, key: Mapping[str, object]) -> bool:
    """Delete the row named by the unique `key`; return whether there was one.

    Args:
        connection: a `sqlite3.Connection`, a psycopg `Connection` or a SQLAlchemy `Session`.
        table: the table's name, or with a session a `Table` or a mapped class.
        key: the unique key's columns and values.

    Raises:
        StoreError: `key` matched several rows (it is not unique); roll back.
    """
    run = _executor(connection)
    name = _table_name(table)
    return _one(run.rows(_delete(name, key, run.mark), list(key.values())), name) is not None


async def ainsert_if_absent(
    connection: AsyncConnection,
    table: TableRef,
    values: Mapping[str, object],
    *,
    unique: Sequence[str],
) -> Inserted:
    """The async twin of `insert_if_absent`, on an `AsyncConnection` or an `AsyncSession`."""
    run = _async_executor(connection)
    name = _table_name(table)
    key = _unique_values(values, unique)
    insert, select = _insert(name, values, unique, run.mark), _select(name, key, run.mark)
    for _ in range(_INSERT_ATTEMPTS):
        rows = await run.rows(insert, list(values.values()))
        if rows:
            return Inserted(rows[0], inserted=True)
        existing = _one(await run.rows(select, list(key.values())), name)
        if existing is not None:
            return Inserted(existing, inserted=False)
    raise StoreError(f"The row in {name} kept changing during {_INSERT_ATTEMPTS} attempts.")


async def aupdate_by_key(
    connection: AsyncConnection,
    table: TableRef,
    key: Mapping[str, object],
    values: Mapping[str, object],
) -> Row | None:
    """The async twin of `update_by_key`."""
    run = _async_executor(connection)
    name = _table_name(table)
    rows = await run.rows(_update(name, key, values, run.mark), [*values.values(), *key.values()])
    return _one(rows, name)


async def adelete_by_key(
    connection: AsyncConnection, table: TableRef, key: Mapping[str, object]
) -> bool:
    """The async twin of `delete_by_key`."""
    run = _async_executor(connection)
    name = _table_name(table)
    rows = await run.rows(_delete(name, key, run.mark), list(key.values()))
    return _one(rows, name) is not None
