"""Auto-pipelining for the async PostgreSQL store: concurrent calls' statements in batches.

The record statements that concurrent calls issue (the claims and completions of concurrent
requests) are queued with a future each. The first one queued while a connection is idle starts
a sender task on it, whose first step runs on the event loop's next turn, after every task ready
in this turn has queued its statement. The sender writes the whole queue at once on its own
connection in libpq's pipeline mode, reads the results in order, and resolves each future with
its own row or error. Each of the batcher's connections (`connections`, one by default) has at
most one batch in flight: the next batch goes to an idle one, or, while every one is busy,
collects until one frees. Alone, a statement costs about what it costs on a pooled connection.

- **One commit per batch.** In the extended protocol the statements between two Sync messages
  are one implicit transaction, and the batch ends with one Sync: PostgreSQL flushes its WAL
  once for the whole batch instead of once per write (statements on one connection run one after
  another, so a Sync after each would make their commits wait for each other's flushes). No
  caller learns its row before that commit: a claim is never reported acquired and then rolled
  back. A batch whose transaction failed (one statement's error aborts the others; a deadlock
  with another transaction) applied nothing, so each of its statements runs again on its own,
  each with its own Sync (its own commit), and each caller gets what its statement alone gives;
  nothing is ever applied twice.
- **Lock order.** Every statement locks at most the one record it names. A batch is sent in the
  order of its records' ids (stably: two statements on one record keep their order), so two
  batches, on two connections of this batcher or of two processes, take their row locks in the
  same order and never deadlock with each other: one waits for the other's commit. A deadlock
  that takes another transaction too (one of transactional mode holding records, say) is
  undone by the run one by one.
- **A lost connection** fails every caller whose batch had not committed on it, each with its
  own `psycopg.OperationalError` (the store's `StoreUnavailableError`): a statement sent and not
  answered may or may not have run, as without batching. The next batch on that connection's
  place opens a new one; the other connections' batches are not disturbed.
- **Cancellation.** A caller cancelled before its batch is written is left out of it; after,
  its statement runs and its row is dropped. Callers never cancel a sender, so a batch is always
  read to its end or its connection closed: the next batch never reads another's results.
- **Prepared statements.** Each statement is prepared on a connection the first time it is sent
  there with a given set of parameter types, then executed by name.

A batcher belongs to one event loop at a time; met on another loop, it starts afresh there.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from retrysafe.stores._postgres_link import Call, Link
from retrysafe.stores._sql.postgres_deadline import AsyncReadDeadline, late

__all__ = ["DEFAULT_CONNECTIONS", "AsyncStatementPipeline"]

DEFAULT_CONNECTIONS = 1
"""Connections (batches in flight) of a batcher: more did not pay when measured with 16
concurrent callers (smaller batches, more commits, more CPU; docs/benchmarks.md, issue 15)."""


class _Lane:
    """One connection of the batcher and its sender: at most one batch in flight on it."""

    __slots__ = ("busy", "link", "sender")

    def __init__(self) -> None:
        self.link: Link | None = None
        self.busy = False
        """Whether a sender task runs on it: it sends what is queued before it ends."""
        self.sender: asyncio.Task[None] | None = None

    def drop(self) -> None:
        """Forget the connection, closing it without a word to the server."""
        link, self.link = self.link, None
        if link is not None:
            link.pgconn.finish()


class AsyncStatementPipeline:
    """Send the statements that concurrent calls issue in one loop turn as one batch.

    Args:
        conninfo: the libpq connection string of the store.
        connect_timeout: seconds (whole) for a new connection.
        connections: how many connections, each with one batch in flight at most.
        read_timeout: seconds a batch may wait for its results; past it, its connection is
            cut (`stores/_sql/postgres_deadline.py`) and its callers fail as on a lost
            connection (the store's `StoreUnavailableError`).
    """

    __slots__ = (
        "_connect_timeout",
        "_conninfo",
        "_deadline",
        "_lanes",
        "_loop",
        "_queue",
        "_starting",
        "batches",
        "commit_each",
        "reruns",
        "statements",
    )

    def __init__(
        self,
        conninfo: str,
        *,
        connect_timeout: int,
        read_timeout: float = 30.0,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        self._conninfo = conninfo
        self._connect_timeout = connect_timeout
        self._deadline = AsyncReadDeadline(read_timeout)
        self._lanes: list[_Lane] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[Call] = []
        self._starting = False
        """Whether a sender has been started and has not taken the queue yet."""
        self.connections = connections
        self.commit_each = False
        """A Sync (a commit) after each statement instead of one per batch: for measurements."""
        self.batches = 0
        """Batches sent so far, for tests and tuning."""
        self.statements = 0
        """Statements sent in those batches (once each, however often they ran)."""
        self.reruns = 0
        """Batches whose transaction failed, so that their statements ran again one by one."""

    @property
    def connections(self) -> int:
        """How many connections the batcher uses: batches in flight at most."""
        return len(self._lanes)

    @connections.setter
    def connections(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"A batcher needs at least one connection, not {count}.")
        lanes = self._lanes
        if any(lane.busy for lane in lanes[count:]):
            raise RuntimeError("A connection with a batch in flight cannot be removed.")
        for lane in lanes[count:]:
            lane.drop()
        del lanes[count:]
        lanes.extend(_Lane() for _ in range(count - len(lanes)))

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
        if not self._starting:
            for lane in self._lanes:
                if not lane.busy:
                    lane.busy = self._starting = True
                    # The sender works for every caller of its batches, so it runs in a context
                    # of its own: no caller's context variables (a trace, a deadline) leak in.
                    lane.sender = loop.create_task(
                        self._send_queued(lane), context=contextvars.Context()
                    )
                    break
        return future

    async def aclose(self) -> None:
        """Let the batches queued or in flight finish, then close the batcher's connections."""
        if self._loop is asyncio.get_running_loop():
            for lane in self._lanes:
                while lane.busy and lane.sender is not None:
                    await asyncio.wait((lane.sender,))  # never cancels the sender, unlike await
        for lane in self._lanes:
            link, lane.link = lane.link, None
            if link is not None:
                await link.aclose()

    def forget_idle(self) -> None:
        """Close the connections with no batch in flight: the store found another of its
        connections silently lost (a reply that never came), and these most likely are too
        (a NAT or firewall state expired), each of which would cost a batch its read timeout.
        The next batch on such a lane opens a new connection."""
        for lane in self._lanes:
            if not lane.busy:
                lane.drop()

    def _start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on `loop`: connections and the queue belong to one event loop."""
        for lane in self._lanes:
            lane.drop()  # made on another loop, whose waits cannot be used here
            lane.busy = False
            lane.sender = None
        self._loop = loop
        self._queue = []
        self._starting = False

    async def _send_queued(self, lane: _Lane) -> None:
        """Send the queue in batches on `lane`, one in flight at a time, until it is empty."""
        self._starting = False  # this turn's statements are queued: the next ones start anew
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(lane, batch)
        except BaseException as error:
            self._fail_queued(error)
            raise
        finally:
            lane.busy = False

    def _fail_queued(self, error: BaseException) -> None:
        """Only the event loop's shutdown cancels a sender (`_send` has failed its batch): the
        callers still queued learn that their statements were never sent."""
        queued, self._queue = self._queue, []
        _fail(queued, error)

    async def _send(self, lane: _Lane, batch: list[Call]) -> None:
        """Run `batch` in one transaction (or, failing, statement by statement); settle it."""
        batch.sort(key=_record_id)  # the lock order of every batch (see the module's doc)
        link: Link | None = None
        try:
            link = await self._ready_link(lane)
            slots = link.write(batch, each=self.commit_each)
            if not slots:
                return  # every caller was cancelled
            self.batches += 1
            self.statements += sum(isinstance(slot, Call) for slot in slots)
            armed = self._deadline.arm(link.conn)  # past it, the socket is shut down under us
            try:
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
            except psycopg.Error as error:
                if self._deadline.disarm(armed):
                    raise psycopg.OperationalError(late(self._deadline.timeout)) from error
                raise
            finally:
                self._deadline.disarm(armed)
        except BaseException as error:
            # The results not read yet are lost with the connection: close it, so no later
            # batch reads them, and fail every caller whose transaction had not committed.
            _fail(batch, error)
            if link is not None and lane.link is link:
                lane.drop()
            if not isinstance(error, Exception):
                raise  # cancelled (the loop is shutting down) or interrupted

    async def _ready_link(self, lane: _Lane) -> Link:
        """Return `lane`'s connection, open and in pipeline mode."""
        link = lane.link
        if link is not None and not link.healthy():
            lane.drop()
            link = None
        if link is None:
            conn = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=self._connect_timeout
            )
            link = lane.link = Link(conn)
        return link


def _record_id(call: Call) -> str:
    """The id of the record a call's statement locks, if any: the batch's sort key."""
    return str(call.params.get("id", ""))


def _fail(calls: list[Call], error: BaseException) -> None:
    """Fail every call still awaited, each with its own error caused by `error`."""
    for call in calls:
        if not call.future.done():
            fresh = psycopg.OperationalError(f"The batch of PostgreSQL statements failed: {error}")
            fresh.__cause__ = error
            call.future.set_exception(fresh)
