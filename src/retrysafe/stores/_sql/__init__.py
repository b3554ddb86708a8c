"""The records tables of the SQL stores, which transactional mode shares.

The SQLite and the PostgreSQL store keep their records in one table each, and transactional mode
(`retrysafe.transactions`) runs the stores' own statements on that table inside the caller's
transaction, so every mode sees the records the others wrote. Nothing here imports a driver the
caller does not use: each module below imports its own.

- `sqlite.py`: the SQLite table, its statements and the primitives on a `sqlite3` connection;
  `sqlite_connection.py` opens connections, runs write transactions and maps errors;
  `sqlite_file.py` is the SQLite store's engine (schema, group commit),
  `sqlite_threads.py` its connections (one per thread, all closed with the store),
  `sqlite_writer.py` the async face's writer thread, and `sqlite_runners.py` how each face
  runs the primitives.
- `postgres.py`: the PostgreSQL table's statements rendered for one table, and its rows;
  `postgres_statements.py` is their text; `postgres_connection.py` reads a store URL and maps
  errors. The primitives that run them on a psycopg connection, for the store and transactional
  mode alike, are `stores/_async/postgres_records.py` (and its generated sync twin).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import RECORD_FIELDS, decode_part

__all__ = ["DEFAULT_TABLE", "RECORD_COLUMNS", "record_from_columns"]

DEFAULT_TABLE: Final = "retrysafe_records"
"""The records table of every SQL store and of transactional mode, unless `table` names another."""

RECORD_COLUMNS: Final = ("namespace", "scope", "key", *RECORD_FIELDS)
"""The columns that hold a record, in both tables (after the primary key, `id`)."""


def record_from_columns(values: Sequence[Any]) -> Record:
    """Return the record stored in the values of `RECORD_COLUMNS`, in that order.

    Identity parts, the fingerprint and the recovery point are stored as bytes through
    `encode_part`, so any string round-trips (NUL, non-ASCII, lone surrogates).
    """
    namespace, scope, key, fingerprint, state, token = values[:6]
    created_at, lease_expires_at, expires_at, outcome, recovery_point = values[6:11]
    return Record(
        identity=Identity(decode_part(namespace), decode_part(scope), decode_part(key)),
        fingerprint=decode_part(fingerprint),
        state=State(state),
        token=token,
        created_at=created_at,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=None if outcome is None else bytes(outcome),
        recovery_point=None if recovery_point is None else decode_part(recovery_point),
    )
