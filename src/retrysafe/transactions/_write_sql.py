"""The pure part of the idempotent write helpers: checked identifiers and their statements.

`insert_if_absent`, `update_by_key` and `delete_by_key` (`_async/writes.py` and its generated
sync twin) build their statements here and run them through an executor of the caller's
driver. Table and column names are checked and quoted; every value is a bound parameter (B34).

Each executor names its database's `Dialect`: the driver's placeholder, the identifier quote,
and whether the database has `RETURNING` (SQLite and PostgreSQL, with `ON CONFLICT`). MySQL and
MariaDB have neither (MariaDB's `RETURNING` is partial), so their helpers write, then read the
row back, under a lock where another transaction could change it (`_async/writes.py`):

- `insert_if_absent`: SQLite, PostgreSQL: `INSERT ... ON CONFLICT (unique) DO NOTHING
  RETURNING *`, else a read. MySQL: `INSERT`; on a duplicate key (1062), the row that is there,
  read `LOCK IN SHARE MODE`.
- `update_by_key`: `UPDATE ... RETURNING *`. MySQL: `SELECT ... FOR UPDATE`, `UPDATE`, a read.
- `delete_by_key`: `DELETE ... RETURNING *`. MySQL: `SELECT ... FOR UPDATE`, `DELETE`.

Not `INSERT IGNORE`: it turns every error of the row into a warning (a NULL in a NOT NULL
column is stored as the column's default), not only the duplicate key. Not `ON DUPLICATE KEY
UPDATE`: it also swallows a conflict on another unique key, and whether it inserted shows only
in the affected-row count, which the `CLIENT_FOUND_ROWS` flag (set by SQLAlchemy and Django)
makes the same for an insert and a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from retrysafe._errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from typing import TypeAlias

    from sqlalchemy import Table

    TableRef: TypeAlias = str | Table | type[object]
    """A table's name, or with a session a SQLAlchemy `Table` or a mapped class."""

__all__ = [
    "DUPLICATE_KEY",
    "INSERT_ATTEMPTS",
    "MYSQL",
    "Dialect",
    "Inserted",
    "Row",
    "delete_sql",
    "error_number",
    "insert_sql",
    "one_row",
    "select_sql",
    "session_dialect",
    "table_name",
    "unique_values",
    "update_sql",
]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
INSERT_ATTEMPTS = 3
DUPLICATE_KEY: Final = frozenset({1022, 1062, 1586})
"""MySQL's error numbers for a duplicate key (ER_DUP_KEY, ER_DUP_ENTRY, ..._WITH_KEY_NAME)."""

Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells the helpers' statements.

    Attributes:
        mark: the driver's placeholder (`?`, `%s`).
        quote: the identifier quote.
        returning: whether writes can return their rows (`RETURNING`, and `ON CONFLICT`).
    """

    mark: str
    quote: str = '"'
    returning: bool = True

    def lock(self, *, exclusive: bool) -> str:
        """Return the clause that makes a SELECT a locking read (MySQL: the latest committed
        rows rather than the transaction's snapshot, locked until it ends)."""
        return " FOR UPDATE" if exclusive else " LOCK IN SHARE MODE"


MYSQL: Final = Dialect("%s", "`", returning=False)
"""MySQL and MariaDB, through PyMySQL or aiomysql (both `%s`)."""
SQLITE: Final = Dialect("?", "`")
"""SQLite: its backtick quote names only identifiers, where a double-quoted name that matches no
column is read as a string (`"stauts" = 'x'`), so a misspelled key column would match nothing,
or every row."""


@dataclass(frozen=True, slots=True)
class Inserted:
    """What `insert_if_absent` found or made.

    Attributes:
        row: the row with the unique key, column name to value.
        inserted: whether this call inserted it (False: it was there already).
    """

    row: Row
    inserted: bool


def _quote(name: str, dialect: Dialect) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"{name!r} is not a plain SQL identifier: use ASCII letters, digits and underscores."
        )
    return f"{dialect.quote}{name}{dialect.quote}"


def table_name(table: object, dialect: Dialect) -> str:
    """Return the quoted table name of a name, a SQLAlchemy `Table` or a mapped class."""
    if isinstance(table, str):
        return ".".join(_quote(part, dialect) for part in table.split("."))
    local = getattr(table, "__table__", table)  # a declarative class maps to its Table
    name, schema = getattr(local, "name", None), getattr(local, "schema", None)
    if not isinstance(name, str):
        raise ConfigurationError(f"Expected a table name, Table or mapped class, not {table!r}.")
    quoted = _quote(name, dialect)
    return quoted if schema is None else f"{_quote(schema, dialect)}.{quoted}"


def _columns(values: Mapping[str, object], what: str, dialect: Dialect) -> list[str]:
    if not values:
        raise ConfigurationError(f"{what} must name at least one column.")
    return [_quote(column, dialect) for column in values]


def _key_columns(key: Mapping[str, object], dialect: Dialect) -> list[str]:
    columns = _columns(key, "The unique key", dialect)
    missing = [name for name, value in key.items() if value is None]
    if missing:
        # NULL never equals NULL, and unique constraints let NULLs repeat.
        raise ConfigurationError(f"Unique-key columns cannot be NULL: {missing}.")
    return columns


def _where(columns: Sequence[str], mark: str) -> str:
    return " AND ".join(f"{column} = {mark}" for column in columns)


# The statements. Identifiers were checked and quoted by `_quote`; values are parameters.


def insert_sql(
    table: str, values: Mapping[str, object], unique: Sequence[str], dialect: Dialect
) -> str:
    """Return INSERT ... ON CONFLICT (unique) DO NOTHING RETURNING *, or a plain INSERT where
    the database has no RETURNING."""
    columns = ", ".join(_columns(values, "The values", dialect))
    marks = ", ".join(dialect.mark for _ in values)
    insert = f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
    if not dialect.returning:
        return insert
    conflict = ", ".join(_quote(column, dialect) for column in unique)
    return f"{insert} ON CONFLICT ({conflict}) DO NOTHING RETURNING *"


def select_sql(table: str, key: Mapping[str, object], dialect: Dialect, *, lock: str = "") -> str:
    """Return the SELECT of the rows that `key` names, with a `Dialect.lock` clause if given."""
    where = _where(_key_columns(key, dialect), dialect.mark)
    return f"SELECT * FROM {table} WHERE {where}{lock}"  # noqa: S608


def update_sql(
    table: str, key: Mapping[str, object], values: Mapping[str, object], dialect: Dialect
) -> str:
    """Return the UPDATE that sets `values` on the rows `key` names, returning them where the
    database can."""
    columns = _columns(values, "The values", dialect)
    assignments = ", ".join(f"{column} = {dialect.mark}" for column in columns)
    where = _where(_key_columns(key, dialect), dialect.mark)
    update = f"UPDATE {table} SET {assignments} WHERE {where}"  # noqa: S608
    return f"{update} RETURNING *" if dialect.returning else update


def delete_sql(table: str, key: Mapping[str, object], dialect: Dialect) -> str:
    """Return the DELETE of the rows `key` names, returning them where the database can."""
    delete = f"DELETE FROM {table} WHERE {_where(_key_columns(key, dialect), dialect.mark)}"  # noqa: S608
    return f"{delete} RETURNING *" if dialect.returning else delete


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


def session_dialect(name: str, paramstyle: str) -> Dialect:
    """Return the dialect of a SQLAlchemy dialect `name` whose driver has `paramstyle`."""
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}
    if paramstyle not in marks:
        raise ConfigurationError(f"The write helpers do not support paramstyle {paramstyle!r}.")
    if name in ("mysql", "mariadb"):
        return MYSQL
    if name == "sqlite":
        return Dialect(marks[paramstyle], SQLITE.quote)
    return Dialect(marks[paramstyle])


def error_number(error: BaseException) -> int | None:
    """Return the MySQL error number of a driver's error (PyMySQL, aiomysql:
    `args[0]`), also when SQLAlchemy wraps it (`.orig`); None for any other error."""
    cause = getattr(error, "orig", None) or error
    number = cause.args[0] if cause.args else None
    return number if isinstance(number, int) else None
