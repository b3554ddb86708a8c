"""Idempotent write helpers: writes that leave the same rows however often they run (B31).

- `insert_if_absent`: insert a row unless one with the same unique key exists; either way,
  return the row that is there (`INSERT ... ON CONFLICT (key) DO NOTHING RETURNING *`, then a
  read). The database's unique constraint decides, so two racing inserts make one row.
- `update_by_key`: set columns to given values on the one row a unique key names. Setting a
  value is idempotent; an increment (`n = n + 1`) is not, so these helpers take values only.
- `delete_by_key`: delete the row a unique key names; a repeat deletes nothing.

They run in the caller's transaction and never commit: use them inside a transactional-mode
block or a phase so they commit together with the key. They take a `sqlite3` connection, a
psycopg 3 or PyMySQL connection or a SQLAlchemy session (sync names), or a psycopg
`AsyncConnection`, an aiomysql connection or an `AsyncSession` (the `a`-prefixed names).
Table and column names are checked identifiers; every value is a bound parameter (B34).
`insert_if_absent`'s `unique` columns must match a unique index or primary key of the table
(SQLite and PostgreSQL both refuse otherwise). MySQL and MariaDB have no `RETURNING`: there
each helper writes, then reads the row back under a row lock (`_write_sql.py`).

The `a` functions are written once, in `_async/writes.py`; the sync ones are generated from
them (`_sync/writes.py`, `scripts/unasync.py`). Their statements are built in `_write_sql.py`.
"""

from __future__ import annotations

from retrysafe.transactions._async.writes import adelete_by_key, ainsert_if_absent, aupdate_by_key
from retrysafe.transactions._sync.writes import delete_by_key, insert_if_absent, update_by_key
from retrysafe.transactions._write_sql import Inserted

__all__ = [
    "Inserted",
    "adelete_by_key",
    "ainsert_if_absent",
    "aupdate_by_key",
    "delete_by_key",
    "insert_if_absent",
    "update_by_key",
]
