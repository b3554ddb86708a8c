# Generated from transactions/_async/writes.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The idempotent write helpers, run on the caller's connection in its open transaction.

What they do and guarantee is told in `transactions/writes.py`; their statements are built in
`transactions/_write_sql.py` and run through the executor of the caller's driver. On a
database without `RETURNING` (MySQL, MariaDB) each helper writes and then reads the row back,
under the row lock its write or a locking read took, so no other transaction can change the
row in between (see `_write_sql.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from retrysafe._errors import StoreError
from retrysafe.transactions._dispatch import sync_executor
from retrysafe.transactions._write_sql import (
    DUPLICATE_KEY,
    INSERT_ATTEMPTS,
    Inserted,
    Row,
    delete_sql,
    error_number,
    insert_sql,
    one_row,
    select_sql,
    table_name,
    unique_values,
    update_sql,
)

if TYPE_CHECKING:
    from retrysafe.transactions._sync.executors import Executor
    from retrysafe.transactions._drivers import Connection
    from retrysafe.transactions._write_sql import TableRef

__all__ = ["delete_by_key", "insert_if_absent", "update_by_key"]


def insert_if_absent(
    connection: Connection,
    table: TableRef,
    values: Mapping[str, object],
    *,
    unique: Sequence[str],
) -> Inserted:
    """Insert `values` unless a row with the same `unique` columns exists; return that row.

    Args:
        connection: the caller's connection or session (`retrysafe.transactions.writes`).
        table: the table's name, or with a session a `Table` or a mapped class.
        values: column name to value for the new row.
        unique: the columns of a unique constraint of the table, all present in `values`.
    """
    run = sync_executor(connection)
    dialect = run.dialect
    name = table_name(table, dialect)
    key = unique_values(values, unique)
    insert, select = insert_sql(name, values, unique, dialect), select_sql(name, key, dialect)
    if not dialect.returning:
        return _insert_then_read(run, name, insert, values, key)
    for _ in range(INSERT_ATTEMPTS):
        rows = run.rows(insert, list(values.values()))
        if rows:
            return Inserted(rows[0], inserted=True)
        # The conflicting row may have been deleted since: try again.
        existing = one_row(run.rows(select, list(key.values())), name)
        if existing is not None:
            return Inserted(existing, inserted=False)
    raise StoreError(f"The row in {name} kept changing during {INSERT_ATTEMPTS} attempts.")


def update_by_key(
    connection: Connection,
    table: TableRef,
    key: Mapping[str, object],
    values: Mapping[str, object],
) -> Row | None:
    """Set `values` on the row named by the unique `key`; return it, or None if there is none.

    Args:
        connection: the caller's connection or session (`retrysafe.transactions.writes`).
        table: the table's name, or with a session a `Table` or a mapped class.
        key: the unique key's columns and values.
        values: column name to the value it is set to.

    Raises:
        StoreError: `key` matched several rows (it is not unique); roll back.
    """
    run = sync_executor(connection)
    dialect = run.dialect
    name = table_name(table, dialect)
    statement = update_sql(name, key, values, dialect)
    params = [*values.values(), *key.values()]
    if dialect.returning:
        return one_row(run.rows(statement, params), name)
    if _locked_row(run, name, key) is None:
        return None
    run.rows(statement, params)
    moved = {**key, **{column: values[column] for column in key if column in values}}
    return one_row(run.rows(select_sql(name, moved, dialect), list(moved.values())), name)


def delete_by_key(
    connection: Connection, table: TableRef, key: Mapping[str, object]
) -> bool:
    """Delete the row named by the unique `key`; return whether there was one.

    Args:
        connection: the caller's connection or session (`retrysafe.transactions.writes`).
        table: the table's name, or with a session a `Table` or a mapped class.
        key: the unique key's columns and values.

    Raises:
        StoreError: `key` matched several rows (it is not unique); roll back.
    """
    run = sync_executor(connection)
    dialect = run.dialect
    name = table_name(table, dialect)
    statement = delete_sql(name, key, dialect)
    if dialect.returning:
        return one_row(run.rows(statement, list(key.values())), name) is not None
    if _locked_row(run, name, key) is None:
        return False
    run.rows(statement, list(key.values()))
    return True


def _insert_then_read(
    run: Executor, name: str, insert: str, values: Mapping[str, object], key: Row
) -> Inserted:
    """Insert, then read the row back; on a duplicate key, read the row that is there.

    The duplicate-key error leaves the existing row share-locked by this transaction (InnoDB
    locks the duplicate it found), so it cannot change or go before the read, which is a
    locking one: it sees the latest committed row, not the transaction's snapshot. A row that
    the read does not find means the conflict was on another unique key: the driver's error
    stands, as `ON CONFLICT (unique)` lets such a conflict through.
    """
    dialect = run.dialect
    try:
        run.rows(insert, list(values.values()))
    except Exception as error:
        if error_number(error) not in DUPLICATE_KEY:
            raise
        shared = select_sql(name, key, dialect, lock=dialect.lock(exclusive=False))
        existing = one_row(run.rows(shared, list(key.values())), name)
        if existing is None:
            raise
        return Inserted(existing, inserted=False)
    row = one_row(run.rows(select_sql(name, key, dialect), list(key.values())), name)
    if row is None:  # pragma: no cover - the row this transaction just inserted
        raise StoreError(f"The row just inserted into {name} cannot be read back.")
    return Inserted(row, inserted=True)


def _locked_row(run: Executor, name: str, key: Mapping[str, object]) -> Row | None:
    """Return the one row `key` names, locked for update until the transaction ends (the
    latest committed row, whatever the snapshot), or None; several rows raise."""
    dialect = run.dialect
    locking = select_sql(name, key, dialect, lock=dialect.lock(exclusive=True))
    return one_row(run.rows(locking, list(key.values())), name)
