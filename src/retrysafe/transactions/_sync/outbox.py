# Generated from transactions/_async/outbox.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Writing a block's outbox messages in its transaction, just before the outcome is stored.

The messages a block added (`retrysafe.outbox.Outbox`) go to the outbox table on the driver
connection the record statements use (`outbox._target`), in the same transaction, so they
commit with the business rows and the record, or roll back with them. The table is created
if missing: on PostgreSQL under an advisory lock held to the commit, as the records table is.
That lock makes every transaction that takes it wait for the others' commits, so it is taken
only while the table is missing, and a table known committed is not looked for again.
"""

from __future__ import annotations

from typing import Final

from retrysafe.outbox._messages import Outbox
from retrysafe.outbox._sql import OutboxTable
from retrysafe.outbox._target import outbox_target, server_of
from retrysafe.transactions._sync.executors import Executor
from retrysafe.transactions._dispatch import sync_executor

__all__ = ["OutboxWriter"]

# PostgreSQL outbox tables known to exist, by (host, port, database, table): looked for once per
# process, as the records tables are (`sql_backend._ready_tables`). A table is remembered only
# once known committed (not created by the open transaction, which may still roll back); one
# whose insert fails because it is missing (dropped since) is forgotten, and made again next time.
_ready_tables: set[tuple[str, ...]] = set()
_UNDEFINED_TABLE: Final = "42P01"  # PostgreSQL's SQLSTATE for a missing table


class OutboxWriter:
    """Writes outbox messages on a transaction's backend.

    Args:
        backend: the transaction's backend, inside its open transaction.
    """

    def __init__(self, backend: object) -> None:
        self.backend = backend

    def write(self, outbox: Outbox, *, now: float) -> None:
        """Write the messages `outbox` holds, creating the table if it is missing."""
        pending = outbox.pending
        if not pending:
            return
        connection, table = outbox_target(self.backend)
        run = sync_executor(connection)
        key = (*server_of(connection), table.name)
        if table.dialect == "sqlite":
            for statement in table.create:  # no lock to take: the transaction holds SQLite's
                run.rows(statement, [])
        elif key not in _ready_tables:
            _prepare_postgres(run, table, key)
        try:
            for message in pending:
                row = (message.message_id, message.topic, message.payload, message.headers, now)
                run.rows(table.insert, list(row))
        except Exception as error:
            if getattr(error, "sqlstate", None) == _UNDEFINED_TABLE:
                _ready_tables.discard(key)
            raise


def _prepare_postgres(run: Executor, table: OutboxTable, key: tuple[str, ...]) -> None:
    """Create the table under the advisory lock if it is missing; remember it once committed."""
    [found] = run.rows(table.exists, [])
    if not found["found"]:
        run.rows(table.lock_schema, [table.name])
        for statement in table.create:
            run.rows(statement, [])
    elif found["committed"]:
        _ready_tables.add(key)
