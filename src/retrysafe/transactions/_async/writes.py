"""The idempotent write helpers, run on the caller's connection in its open transaction.

What they do and guarantee is told in `transactions/writes.py`; their statements are built in
`transactions/_write_sql.py` and run through the executor of the caller's driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from retrysafe._errors import StoreError
from retrysafe.transactions._dispatch import async_executor
from retrysafe.transactions._write_sql import (
    INSERT_ATTEMPTS,
    Inserted,
    Row,
    delete_sql,
    insert_sql,
    one_row,
    select_sql,
    table_name,
    unique_values,
    update_sql,
)

if TYPE_CHECKING:
    from retrysafe.transactions._drivers import AsyncConnection
    from retrysafe.transactions._write_sql import TableRef

__all__ = ["adelete_by_key", "ainsert_if_absent", "aupdate_by_key"]


async def ainsert_if_absent(
    connection: AsyncConnection,
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
    run = async_executor(connection)
    name = table_name(table)
    key = unique_values(values, unique)
    insert, select = insert_sql(name, values, unique, run.mark), select_sql(name, key, run.mark)
    for _ in range(INSERT_ATTEMPTS):
        rows = await run.rows(insert, list(values.values()))
        if rows:
            return Inserted(rows[0], inserted=True)
        # The conflicting row may have been deleted since: try again.
        existing = one_row(await run.rows(select, list(key.values())), name)
        if existing is not None:
            return Inserted(existing, inserted=False)
    raise StoreError(f"The row in {name} kept changing during {INSERT_ATTEMPTS} attempts.")


async def aupdate_by_key(
    connection: AsyncConnection,
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
    run = async_executor(connection)
    name = table_name(table)
    statement = update_sql(name, key, values, run.mark)
    return one_row(await run.rows(statement, [*values.values(), *key.values()]), name)


async def adelete_by_key(
    connection: AsyncConnection, table: TableRef, key: Mapping[str, object]
) -> bool:
    """Delete the row named by the unique `key`; return whether there was one.

    Args:
        connection: the caller's connection or session (`retrysafe.transactions.writes`).
        table: the table's name, or with a session a `Table` or a mapped class.
        key: the unique key's columns and values.

    Raises:
        StoreError: `key` matched several rows (it is not unique); roll back.
    """
    run = async_executor(connection)
    name = table_name(table)
    rows = await run.rows(delete_sql(name, key, run.mark), list(key.values()))
    return one_row(rows, name) is not None
