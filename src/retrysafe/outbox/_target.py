"""Where a transaction's outbox messages are written: its driver connection and records table.

Pure: it only follows attributes. A transaction's backend is a driver's backend (`sqlite3`,
psycopg: `connection` is the driver connection, `table` the records table), or wraps one:
encryption at rest (`backend`), a SQLAlchemy session or Django (`_records`, the driver backend
their `begin` made on the session's own connection). The messages go where the record goes,
so they commit with it.
"""

from __future__ import annotations

from typing import Final

from retrysafe._errors import ConfigurationError
from retrysafe.outbox._messages import outbox_table
from retrysafe.outbox._sql import Dialect, OutboxTable
from retrysafe.transactions import _drivers as drivers

__all__ = ["outbox_target", "server_of"]

_WRAPPERS: Final = 4  # encryption around a session around a driver backend, with room to spare


def outbox_target(backend: object) -> tuple[object, OutboxTable]:
    """Return the driver connection under `backend` and the outbox table next to its records.

    Raises:
        ConfigurationError: the backend is none of transactional mode's (a hand-made one).
    """
    found = backend
    for _ in range(_WRAPPERS):
        connection = getattr(found, "connection", None)
        dialect: Dialect | None = None
        if drivers.is_sqlite_connection(connection):
            dialect = "sqlite"
        elif drivers.is_psycopg_connection(connection) or drivers.is_async_psycopg_connection(
            connection
        ):
            dialect = "postgresql"
        if dialect is not None:
            table = getattr(found, "table", None)
            name = getattr(table, "name", table)
            if isinstance(name, str):
                return connection, OutboxTable(outbox_table(name), dialect)
        found = getattr(found, "backend", None) or getattr(found, "_records", None)
    raise ConfigurationError(
        f"The outbox writes through transactional mode's backends, not {type(backend).__name__}."
    )


def server_of(connection: object) -> tuple[str, ...]:
    """Return the host, port and database of a psycopg connection (sync or async)."""
    info = getattr(connection, "info", None)
    return tuple(str(getattr(info, name, "")) for name in ("host", "port", "dbname"))
