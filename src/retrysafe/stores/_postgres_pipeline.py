"""Auto-pipelining for the async PostgreSQL store: concurrent calls' statements in one batch.

The record statements that concurrent calls issue (the claims and completions of concurrent
requests) are queued with a future each. The first one queued while the batcher is idle starts
the sender task, whose first step runs on the event loop's next turn, after every task ready in
this turn has queued its statement. The sender writes the whole queue at once on the batcher's
own connection in libpq's pipeline mode, reads the results in order, and resolves each future
with its own row or error. While a batch is in flight the next one fills; alone, a statement
costs about what it costs on a pooled connection.

- **One commit per batch.** In the extended protocol the statements between two Sync messages
  are one implicit transaction, and the batch ends with one Sync: PostgreSQL flushes its WAL
  once for the whole batch instead of once per write (statements on one connection run one after
  another, so a Sync after each would make their commits wait for each other's flushes). No
  caller learns its row before that commit: a claim is never reported acquired and then rolled
  back. A batch whose transaction failed (one statement's error aborts the others; a deadlock
  with another process's batch) applied nothing, so each of its statements runs again on its
  own, each with its own Sync (its own commit), and each caller gets what its statement alone
  gives; nothing is ever applied twice.
- **A lost connection** fails every caller whose batch had not committed, each with its own
  `psycopg.OperationalError` (the store's `StoreUnavailableError`): a statement sent and not
  answered may or may not have run, as without batching. The next batch opens a new connection.
- **Cancellation.** A caller cancelled before its batch is written is left out of it; after,
  its statement runs and its row is dropped. Callers never cancel the sender, so a batch is
  always read to its end or its connection closed: the next batch never reads another's results.
- **Prepared statements.** Each statement is prepared on the connection the first time it is
  sent with a given set of parameter types, then executed by name.

A batcher belongs to one event loop at a time; met on another loop, it starts afresh there.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from retrysafe.stores._postgres_link import Call, Link

__all__ = ["AsyncStatementPipeline"]


class AsyncStatementPipeline:
    """Send the statements that concurrent calls issue in one loop turn as one batch.

    Args:
        conninfo: the libpq connection string of the store.
        connect_timeout: seconds (whole) for a new connection.
    """

    __slots__ = (
        "_busy",
        "_connect_timeout",
        "_conninfo",
        "_link",
        "_loop",
        "_queue",
        "_sender",
        "batches",
        "commit_each",
        "reruns",
        "statements",
    )

    def __init__(self, conninfo: str, *, connect_timeout: int) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._link: Link | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[Call] = []
        self._busy = False
        """Whether a sender task is running: it sends whatever is queued before it ends."""
        self._sender: asyncio.Task[None] | None = None
        self.commit_each = False
        """A Sync (a commit) after each statement instead of one per batch: for measurements."""
        self.batches = 0
        """Batches sent so far, for tests and tuning."""
        self.statements = 0
        """Statements sent in those batches (once each, however often they ran)."""
        self.reruns = 0
        """Batches whose transaction failed, so that their statements ran again one by one."""

    async def run_row(self, query: bytes, params: dict[str, Any]) -> TupleRow | None:
        """Run one statement in the next batch; return its first row, or None."""
        return await self._submit(query, params)

    def _submit(self, query: bytes, params: dict[str, Any]) -> asyncio.Future[TupleRow | None]:
        """Queue one statement for the next batch; its future resolves to its first row."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._start_on(loop)
        future: asyncio.Future[TupleRow | None] = loop.create_future()
        self._queue.append(Call(query, params, future))
        if not self._busy:
            self._busy = True
            # The sender works for every caller of its batches, so it runs in a context of its
            # own: no caller's context variables (a trace, a deadline) leak into it.
            self._sender = loop.create_task(self._send_queued(), context=contextvars.Context())
        return future

    async def aclose(self) -> None:
        """Let the batches queued or in flight finish, then close the batcher's connection."""
        if self._loop is asyncio.get_running_loop():
            while self._busy and self._sender is not None:
                await asyncio.wait((self._sender,))  # never cancels the sender, unlike `await`
        link, self._link = self._link, None
        if link is not None:
            await link.aclose()

    def _start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on `loop`: a connection and its queue belong to one event loop."""
        link = self._link
        if link is not None:
            link.pgconn.finish()  # made on another loop, whose waits cannot be used here
        self._loop = loop
        self._link = None
        self._queue = []
        self._busy = False
        self._sender = None

    async def _send_queued(self) -> None:
        """Send the queue in batches, one in flight at a time, until it is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        except BaseException as error:
            # Only the event loop's shutdown cancels the sender (`_send` has failed its batch):
            # the callers still queued learn that their statements were never sent.
            queued, self._queue = self._queue, []
            _fail(queued, error)
            raise
        finally:
            self._busy = False

    async def _send(self, batch: list[Call]) -> None:
        """Run `batch` in one transaction (or, failing, statement by statement); settle it."""
        link: Link | None = None
        try:
            link = await self._ready_link()
            slots = link.write(batch, each=self.commit_each)
            if not slots:
                return  # every caller was cancelled
            self.batches += 1
            self.statements += sum(isinstance(slot, Call) for slot in slots)
            await link.flush()
            again = await link.read(slots)
            if again:
                self.reruns += 1
                for call in again:
                    call.row = call.error = None
                slots = link.write(again, each=True)
                if slots:  # unless every caller of them was cancelled meanwhile
                    await link.flush()
                    await link.read(slots)
        except BaseException as error:
            # The results not read yet are lost with the connection: close it, so no later
            # batch reads them, and fail every caller whose transaction had not committed.
            _fail(batch, error)
            self._link = None
            if link is not None:
                link.pgconn.finish()
            if not isinstance(error, Exception):
                raise  # cancelled (the loop is shutting down) or interrupted

    async def _ready_link(self) -> Link:
        """Return the batcher's connection, open and in pipeline mode."""
        link = self._link
        if link is not None and not link.healthy():
            link.pgconn.finish()
            link = None
        if link is None:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            link = self._link = Link(conn)
        return link


def _fail(calls: list[Call], error: BaseException) -> None:
    """Fail every call still awaited, each with its own error caused by `error`."""
    for call in calls:
        if not call.future.done():
            fresh = psycopg.OperationalError(f"The batch of PostgreSQL statements failed: {error}")
            fresh.__cause__ = error
            call.future.set_exception(fresh)
