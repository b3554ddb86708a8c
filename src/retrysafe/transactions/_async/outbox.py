"""Writing a block's outbox messages in its transaction, just before the outcome is stored.

The messages a block added (`retrysafe.outbox.Outbox`) go to the outbox table on the driver
connection the record statements use (`outbox._target`), in the same transaction, so they
commit with the business rows and the record, or roll back with them. The table is created
if missing: on PostgreSQL under an advisory lock held to the commit, as the records table is.
"""

from __future__ import annotations

from retrysafe.outbox._messages import Outbox
from retrysafe.outbox._target import outbox_target
from retrysafe.transactions._dispatch import async_executor

__all__ = ["AsyncOutboxWriter"]


class AsyncOutboxWriter:
    """Writes outbox messages on a transaction's backend.

    Args:
        backend: the transaction's backend, inside its open transaction.
    """

    def __init__(self, backend: object) -> None:
        self.backend = backend

    async def write(self, outbox: Outbox, *, now: float) -> None:
        """Write the messages `outbox` holds, creating the table if it is missing."""
        pending = outbox.pending
        if not pending:
            return
        connection, table = outbox_target(self.backend)
        run = async_executor(connection)
        if table.dialect == "postgresql":
            rows = await run.rows(table.exists, [table.name])
            if not rows or not next(iter(rows[0].values())):
                await run.rows(table.lock_schema, [table.name])
                for statement in table.create:
                    await run.rows(statement, [])
        else:
            for statement in table.create:
                await run.rows(statement, [])
        for message in pending:
            row = (message.message_id, message.topic, message.payload, message.headers, now)
            await run.rows(table.insert, list(row))
