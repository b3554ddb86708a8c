"""Auto-pipelining for the async Redis store: concurrent calls share one write and one read.

The commands that concurrent calls issue (the claims and completions of concurrent requests)
are queued with a future each. The first one queued while the batcher is idle starts the sender
task, whose first step runs on the event loop's next turn (`create_task` schedules it with
`call_soon`), after every task ready in this turn has queued its command. The sender writes the
whole queue as one non-transactional pipeline on the batcher's own connection, reads the replies
in order, and resolves each future with its own reply or error, as ioredis's
`enableAutoPipelining` does. Under load the batches grow by themselves; alone, a command costs
about what it costs on its own (a task in place of a pool checkout).

- **One connection, one batch in flight.** Redis runs commands one at a time on one thread, and
  the event loop is one thread too, so more connections would add no parallelism; while a batch
  is in flight the next one fills, and its replies come back in the order sent, so matching them
  needs no bookkeeping. The connection is made once with the client's settings and reused: no
  pool checkout and release per command. Before each batch it is checked as the pool checks a
  connection it lends (closed by the server while idle, or holding data nobody asked for:
  reconnect).
- **Errors stay per command.** A reply that is an error (a wrong type, a script error) fails its
  own caller. NOSCRIPT (a restart, `SCRIPT FLUSH`) is answered by `SCRIPT LOAD` and the retry of
  just those commands, once. A connection error or timeout fails every command of the batch
  whose reply was not read yet, each caller with its own copy of the error (which the store maps
  to `StoreUnavailableError`): exactly what a lost reply means without batching, a command that
  may or may not have run. Nothing is retried on a connection error. After a timeout, the
  commands queued behind the batch (never sent) fail too, rather than wait for a timeout of
  their own.
- **Cancellation.** A caller cancelled before its batch is written is left out of it; after,
  its reply is read and dropped. Callers never cancel the sender, so a batch is always read to
  its end or its connection closed: the next batch never reads another's replies.

A batcher belongs to one event loop at a time; met on another loop, it starts afresh there.
The store it serves takes its connection first, to close it or, in a forked child, to keep the
parent's unused (`forget_connections`, `stores/_redis_home.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import math
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe.stores._async.redis_commands import AsyncCommands
from retrysafe.stores._redis_packing import pack_commands

__all__ = ["AsyncAutoPipeline"]

_Command = tuple[tuple[Any, ...], object, asyncio.Future[Any]]
"""A queued command: its arguments, the script to load on NOSCRIPT (None: not a script), and
its caller's future."""


class AsyncAutoPipeline(AsyncCommands):
    """Send the commands that concurrent calls issue in one loop turn as one pipeline.

    Args:
        client: the redis-py client; the batcher's own connection is made with its settings.
    """

    __slots__ = ("_busy", "_connection", "_loop", "_queue", "_sender", "batches", "commands")

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self._connection: AbstractConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: list[_Command] = []
        self._busy = False
        """Whether a sender task is running: it sends whatever is queued before it ends."""
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0
        """Batches sent so far (a NOSCRIPT retry is part of its batch), for tests and tuning."""
        self.commands = 0
        """Commands sent in those batches."""

    async def evalsha(self, script: AsyncScript, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA in the next batch; load it if Redis does not know it."""
        return await self._submit(("EVALSHA", script.sha, 1, key, *args), script.script)

    async def set_new(self, key: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """SET `key` to `value` unless it exists, in the next batch; return what was there."""
        if ttl_ms:
            found = await self._submit(("SET", key, value, "NX", "PX", ttl_ms, "GET"), None)
        else:
            found = await self._submit(("SET", key, value, "NX", "GET"), None)
        return cast("bytes | None", found)

    async def get(self, key: bytes) -> bytes | None:
        """Return the string at `key`, None if absent (GET in the next batch)."""
        return cast("bytes | None", await self._submit(("GET", key), None))

    async def hmget(self, key: bytes, fields: Sequence[str]) -> list[bytes | None]:
        """Return the values of `fields` in the hash at `key` (HMGET in the next batch)."""
        values = await self._submit(("HMGET", key, *fields), None)
        return cast("list[bytes | None]", values)

    def forget_connections(self) -> list[Any]:
        """Return (and forget) the batcher's connection: the next batch makes one."""
        connection, self._connection = self._connection, None
        return [] if connection is None else [connection]

    async def aclose(self) -> None:
        """Let the batches queued or in flight finish, then close the batcher's connection."""
        if self._loop is asyncio.get_running_loop():
            while self._busy and self._sender is not None:
                await asyncio.wait((self._sender,))  # never cancels the sender, unlike `await`
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(RedisError, OSError):  # closing is all that is left to do
                await connection.disconnect()

    def _submit(self, args: tuple[Any, ...], script: object) -> asyncio.Future[Any]:
        """Queue a command; return the future its reply will resolve."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._start_on(loop)
        future = loop.create_future()
        self._queue.append((args, script, future))
        if not self._busy:
            self._busy = True
            # The sender works for every caller of its batches, so it runs in a context of its
            # own: no caller's context variables (a trace, a deadline) leak into it.
            sending = self._send_queued()
            self._sender = loop.create_task(sending, context=contextvars.Context())
        return future

    def _start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start afresh on `loop`: a connection and its queue belong to one event loop."""
        self._loop = loop
        self._connection = None  # made on another loop, whose streams cannot be used here
        self._queue = []
        self._busy = False
        self._sender = None

    async def _send_queued(self) -> None:
        """Send the queue in batches, one in flight at a time, until it is empty."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                # A caller cancelled before its command went out: leave the command out too.
                batch = [command for command in batch if not command[2].done()]
                if batch:
                    await self._send(batch)
        except BaseException as error:
            # Only the event loop's shutdown cancels the sender (`_send` has failed its batch):
            # the callers still queued learn that their commands were never sent.
            queued, self._queue = self._queue, []
            _fail(queued, error)
            raise
        finally:
            self._busy = False

    async def _send(self, batch: list[_Command]) -> None:
        """Write `batch` as one pipeline, read its replies and resolve every caller's future."""
        self.batches += 1
        self.commands += len(batch)
        connection: AbstractConnection | None = None
        try:
            connection = await self._ready_connection()
            await connection.send_packed_command(pack_commands(connection, [c[0] for c in batch]))
            missing = await _read_replies(connection, batch, reload=True)
            if missing:
                await self._reload(connection, missing)
        except BaseException as error:
            # The replies not read yet are lost with the connection (redis-py closes it on its
            # own errors; close it on any other, so no later batch reads a stale reply).
            _fail(batch, error)
            if isinstance(error, RedisTimeoutError):
                # Redis did not answer in time. The commands queued behind this batch were never
                # sent: they fail with it rather than wait for a timeout of their own, so while
                # Redis is stalled no call waits for two timeouts in a row.
                queued, self._queue = self._queue, []
                _fail(queued, error)
            if connection is not None:
                with contextlib.suppress(RedisError, OSError):
                    await connection.disconnect(nowait=True)
            if not isinstance(error, Exception):
                raise  # cancelled (the loop is shutting down) or interrupted

    async def _reload(self, connection: AbstractConnection, missing: list[_Command]) -> None:
        """Load the scripts Redis lost and run just the commands that needed them, once more."""
        missing = [command for command in missing if not command[2].done()]
        if not missing:
            return
        scripts = list(dict.fromkeys(command[1] for command in missing))
        loads: list[tuple[Any, ...]] = [("SCRIPT", "LOAD", script) for script in scripts]
        commands = loads + [command[0] for command in missing]
        await connection.send_packed_command(pack_commands(connection, commands))
        for _ in loads:
            # A load that failed shows in the reply of the command that needed it (NOSCRIPT).
            with contextlib.suppress(ResponseError):
                await connection.read_response()
        await _read_replies(connection, missing, reload=False)

    async def _ready_connection(self) -> AbstractConnection:
        """Return the batcher's connection, connected and clean (as the pool lends one)."""
        connection = self._connection
        if connection is None:
            # The pool's own factory (its subclasses override it), unannotated in redis-py.
            pool = self._redis.connection_pool
            connection = pool.make_connection()  # type: ignore[no-untyped-call]
            self._connection = connection
        elif connection.is_connected:
            try:
                stale = await connection.can_read()  # data that no command asked for
            except (RedisConnectionError, OSError):
                stale = True  # closed by the server while idle (a restart, its `timeout`)
            if stale:
                await connection.disconnect()
        if not connection.is_connected:
            await connection.connect()
        return connection


async def _read_replies(
    connection: AbstractConnection, batch: list[_Command], *, reload: bool
) -> list[_Command]:
    """Read one reply per command of `batch`, in order, resolving each command's future.

    The whole batch is read within the connection's `socket_timeout`, under one timer rather
    than one per reply (a reply's timer costs about as much as parsing it): past it, the
    replies not read yet are lost, as one reply's timeout loses it.

    Returns the commands that met NOSCRIPT, left unresolved when `reload` is true.
    """
    missing: list[_Command] = []
    try:
        async with asyncio.timeout(connection.socket_timeout):
            for command in batch:
                reply: Any
                try:
                    reply = await connection.read_response(timeout=math.inf)  # inf: no timer
                except ResponseError as error:  # this command's own error: the connection is fine
                    if reload and isinstance(error, NoScriptError) and command[1] is not None:
                        missing.append(command)
                        continue
                    reply = error
                future = command[2]
                if future.done():
                    continue  # its caller was cancelled: the reply is read and dropped
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
    except TimeoutError:
        raise RedisTimeoutError(
            f"Timeout reading from Redis: {len(batch)} replies were not all read within "
            f"socket_timeout={connection.socket_timeout}s."
        ) from None
    return missing


def _fail(commands: list[_Command], error: BaseException) -> None:
    """Fail every command still awaited with its own copy of `error` (never one shared)."""
    for _, _, future in commands:
        if not future.done():
            future.set_exception(_copy_for_caller(error))


def _copy_for_caller(error: BaseException) -> Exception:
    """Return an error of the same kind for one caller, caused by `error`.

    Each caller raises its own exception: one instance raised by many tasks would gather all
    their tracebacks. A cancelled or interrupted batch is, to its callers, a lost connection.
    """
    fresh: Exception
    if isinstance(error, Exception):
        try:
            fresh = copy.copy(error)
        except Exception:  # an exception whose constructor does not take its own args
            fresh = RedisConnectionError(f"The batch of Redis commands failed: {error!r}")
    else:
        fresh = RedisConnectionError(f"The batch of Redis commands was interrupted: {error!r}")
    fresh.__cause__ = error
    return fresh
