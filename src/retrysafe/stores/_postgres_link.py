"""The auto-pipeline's connection: record statements written in pipeline mode, results read back.

`Link.write` queues calls' statements (preparing each once per connection and parameter types)
with a Sync after each or one after all; `Link.read` reads every result in order and settles
the calls whose transaction committed. Used by `stores/_postgres_pipeline.py`, which owns the
batching; async only. The statements are psycopg's prepared statements driven through libpq's
pipeline API (`psycopg.pq`) with psycopg's adapters (`Transformer`), without cursors: a cursor
per call would cost more client CPU than the batching saves.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import re
from collections.abc import Iterable
from typing import Any, Final

import psycopg
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.errors import error_from_result
from psycopg.rows import TupleRow

__all__ = ["Call", "Link", "Slot"]

_TUPLES_OK: Final = pq.ExecStatus.TUPLES_OK
_COMMAND_OK: Final = pq.ExecStatus.COMMAND_OK
_FATAL_ERROR: Final = pq.ExecStatus.FATAL_ERROR
_PIPELINE_SYNC: Final = pq.ExecStatus.PIPELINE_SYNC
_BINARY: Final = pq.Format.BINARY
_PLACEHOLDER: Final = re.compile(rb"%\((\w+)\)s|%%")


class _Statement:
    """A record statement in positional form (`$1`, ...), as a prepared statement takes it."""

    __slots__ = ("formats", "names", "text")

    def __init__(self, query: bytes) -> None:
        names: list[str] = []

        def number(match: re.Match[bytes]) -> bytes:
            if match.group(0) == b"%%":
                return b"%"
            name = match.group(1).decode()
            if name not in names:
                names.append(name)
            return b"$%d" % (names.index(name) + 1)

        self.text = _PLACEHOLDER.sub(number, query)
        self.names = tuple(names)
        self.formats = (PyFormat.AUTO,) * len(names)


@functools.lru_cache(maxsize=256)
def _statement(query: bytes) -> _Statement:
    return _Statement(query)


class Call:
    """One caller's statement: what to send, and its result until the batch commits."""

    __slots__ = ("error", "future", "params", "query", "row")

    def __init__(self, query: bytes, params: dict[str, Any], future: asyncio.Future[Any]) -> None:
        self.query = query
        self.params = params
        self.future = future
        self.row: TupleRow | None = None
        self.error: psycopg.Error | None = None

    def settle(self) -> None:
        """Hand the caller its row or its error, unless it stopped waiting."""
        if self.future.done():
            return  # cancelled: the row is dropped
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.row)


class _Prepare:
    """A statement being prepared in a batch; remembered on the connection once it succeeds."""

    __slots__ = ("key", "name")

    def __init__(self, key: tuple[bytes, tuple[int, ...] | None], name: bytes) -> None:
        self.key = key
        self.name = name


Slot = Call | _Prepare | None
"""What each result of a batch answers, in order: a call, a prepare, or a Sync (None)."""


class Link:
    """The batcher's connection, in pipeline mode, and what it has prepared."""

    __slots__ = ("conn", "dumper", "loader", "names", "pgconn", "prepared")

    def __init__(self, conn: psycopg.AsyncConnection[TupleRow]) -> None:
        self.conn = conn
        self.pgconn = conn.pgconn
        self.dumper = Transformer(conn)
        self.loader = Transformer(conn)
        self.prepared: dict[tuple[bytes, tuple[int, ...] | None], bytes] = {}
        self.names = itertools.count(1)
        self.pgconn.enter_pipeline_mode()

    def healthy(self) -> bool:
        """Return whether the connection can take a batch (not closed by the server meanwhile)."""
        pgconn = self.pgconn
        try:
            # A server closing the connection sends a farewell error, then the end of the
            # stream; one read can stop after the first.
            pgconn.consume_input()
            pgconn.consume_input()
            stray = not pgconn.is_busy() and pgconn.get_result() is not None
        except psycopg.OperationalError:
            return False
        return pgconn.status == pq.ConnStatus.OK and not stray

    def write(self, calls: Iterable[Call], *, each: bool) -> list[Slot]:
        """Queue `calls` on the connection, with a Sync after each or one after all."""
        slots: list[Slot] = []
        preparing: dict[tuple[bytes, tuple[int, ...] | None], bytes] = {}
        pgconn, dumper = self.pgconn, self.dumper
        for call in calls:
            if call.future.done():
                continue  # its caller was cancelled before it was sent
            statement = _statement(call.query)
            try:
                params = call.params
                args = dumper.dump_sequence([params[n] for n in statement.names], statement.formats)
            except (KeyError, psycopg.Error) as error:  # this caller's own mistake
                call.future.set_exception(psycopg.ProgrammingError(str(error)))
                continue
            types = dumper.types
            key = (call.query, types)
            name = self.prepared.get(key) or preparing.get(key)
            if name is None:
                name = preparing[key] = b"retrysafe_%d" % next(self.names)
                pgconn.send_prepare(name, statement.text, param_types=types)
                slots.append(_Prepare(key, name))
            formats = dumper.formats
            pgconn.send_query_prepared(name, args, param_formats=formats, result_format=_BINARY)
            slots.append(call)
            if each:
                pgconn.pipeline_sync()
                slots.append(None)
        if slots and not each:
            pgconn.pipeline_sync()
            slots.append(None)
        return slots

    async def flush(self) -> None:
        """Send everything queued, reading what arrives meanwhile so the server never stalls."""
        while self.pgconn.flush():
            await self.wait(writable=True)
            self.pgconn.consume_input()

    async def read(self, slots: list[Slot]) -> list[Call]:
        """Read the result of every slot, settling each committed call; return the calls of the
        transactions that failed, which applied nothing."""
        pgconn = self.pgconn
        again: list[Call] = []
        segment: list[Call] = []  # the calls since the last Sync: one transaction
        failure: psycopg.Error | None = None  # the first error of that transaction
        results: list[pq.abc.PGresult] = []
        index = 0
        while True:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                slot = slots[index]
                if slot is None:  # a Sync: its transaction has ended
                    if result is None:
                        break
                    if result.status != _PIPELINE_SYNC:
                        raise psycopg.OperationalError("PostgreSQL answered a Sync out of order.")
                    again.extend(_committed(segment, failure))
                    segment, failure = [], None
                    index += 1
                    if index == len(slots):
                        return again
                elif result is not None:
                    results.append(result)
                elif results:  # the end of this slot's results
                    error = self._take(slot, results, segment)
                    failure = failure or error
                    results = []
                    index += 1
                else:
                    break  # nothing more has arrived
            await self.wait(writable=False)

    def _take(
        self, slot: Call | _Prepare, results: list[pq.abc.PGresult], segment: list[Call]
    ) -> psycopg.Error | None:
        """Record one slot's result; return its error, if it failed."""
        result = results[-1]
        status = result.status
        error = None
        if status == _FATAL_ERROR:
            error = error_from_result(result, encoding=self.conn.info.encoding)
        if isinstance(slot, _Prepare):
            if status == _COMMAND_OK:
                self.prepared[slot.key] = slot.name
            return error
        segment.append(slot)
        if status == _TUPLES_OK:
            self.loader.set_pgresult(result)
            slot.row = self.loader.load_row(0, tuple) if result.ntuples else None
        elif error is not None:
            slot.error = error
        elif status != pq.ExecStatus.PIPELINE_ABORTED:
            error = slot.error = psycopg.InternalError(f"Unexpected result: {status!r}.")
        return error

    async def wait(self, *, writable: bool) -> None:
        """Wait until the connection's socket is readable (or writable, if asked)."""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        socket = self.pgconn.socket

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(socket, wake)
        if writable:
            loop.add_writer(socket, wake)
        try:
            await ready
        finally:
            loop.remove_reader(socket)
            if writable:
                loop.remove_writer(socket)

    async def aclose(self) -> None:
        """Close the connection."""
        await self.conn.close()


def _committed(segment: list[Call], failure: psycopg.Error | None) -> list[Call]:
    """Settle the calls of a transaction that has ended; return those to run again.

    A transaction that failed applied nothing: alone in it, a call gets its own error (or its
    prepare's); with others, each runs again on its own, as one call's error (a deadlock with
    another batch, say) need not be its own to meet again.
    """
    if failure is not None and len(segment) > 1:
        return [call for call in segment if not call.future.done()]
    for call in segment:
        if failure is not None and call.error is None:
            call.error = failure  # its statement's prepare failed
        call.settle()
    return []
