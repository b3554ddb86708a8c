"""Which executor sends a Redis store's commands, by colour: `sync_executor`, `async_executor`.

The store is written once (`_async/redis.py`; `_sync/redis.py` is generated from it) and asks
here for its executor. A sync caller waits for each reply before its next command, so the sync
store sends each command on its own, on a connection it keeps (`KeptConnections`): no pool
checkout and no trip through the client's generic command path per command, which cost more
client CPU than the round trip itself. The async store batches the commands of concurrent calls
(`_redis_pipeline.py`) unless told not to. That module is async only: it is imported when an
async store asks for it, never by the sync face.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe._concurrency import monotonic
from retrysafe.stores._async.redis_commands import AsyncCommands
from retrysafe.stores._async.redis_replicas import AsyncPinnedCommands
from retrysafe.stores._redis_packing import PACK as _PACK
from retrysafe.stores._sync.redis_commands import Commands
from retrysafe.stores._sync.redis_replicas import PinnedCommands

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis
    from redis.commands.core import Script

__all__ = ["KeptConnections", "async_executor", "sync_executor"]


_CHECK_AFTER = 1.0
"""Seconds idle after which a kept connection is checked before its next command."""


class _Connection(Protocol):
    """What the executor uses of a redis-py connection (whose own methods are untyped)."""

    def send_packed_command(self, command: Sequence[bytes], check_health: bool = True) -> None:
        """Send the packed command."""

    def pack_command(self, *args: Any) -> list[bytes]:
        """Return `args` as a packed command."""
        ...

    def read_response(self) -> Any:
        """Read one reply; a Redis error is raised."""

    def can_read(self, timeout: float = 0) -> bool:
        """Return whether data waits on the socket; raise if the server closed it."""
        ...

    def disconnect(self) -> None:
        """Close the socket; the connection reconnects on its next send."""


class KeptConnections(Commands):
    """Send each command on its own, on a connection the store keeps between commands.

    A thread takes an idle connection (or a new one from the client's pool), sends the
    command, reads the reply and puts the connection back: the store keeps as many
    connections as it has had callers at once, and gives them back to the pool on `close`.
    A connection idle for `_CHECK_AFTER` seconds or more is checked as the pool checks the
    connections it hands out (no unread data, not closed by the server: an idle timeout, a
    restart) and reconnected if need be; one in steady use is not (a `poll` a command saved).
    A connection that failed, or was interrupted between a command and its reply, is
    disconnected and given back to the pool, so no caller can ever read another's reply.
    After `os.fork`, the child leaves the parent's connections alone and opens its own.

    Args:
        client: the redis-py client whose pool the connections come from.
    """

    __slots__ = ("__weakref__", "_idle", "_pool")

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self._pool = client.connection_pool
        self._idle: list[tuple[_Connection, float]] = []  # and since when idle (monotonic)
        _KEPT.add(self)

    def forget(self) -> None:
        """Drop the idle connections without closing them (a forked child's are the parent's)."""
        self._idle = []

    def evalsha(self, script: Script, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA, loading it first if Redis does not know it."""
        try:
            return self._execute((b"EVALSHA", script.sha, 1, key, *args))
        except NoScriptError:
            # A restart or SCRIPT FLUSH since the script was last run: load it, once.
            self._execute((b"SCRIPT", b"LOAD", script.script))
            return self._execute((b"EVALSHA", script.sha, 1, key, *args))

    def set_new(self, key: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """SET `key` to `value` unless it exists; return what was there (None: it is set)."""
        found: bytes | None
        if ttl_ms:
            found = self._execute((b"SET", key, value, b"NX", b"PX", ttl_ms, b"GET"))
        else:
            found = self._execute((b"SET", key, value, b"NX", b"GET"))
        return found

    def get(self, key: bytes) -> bytes | None:
        """Return the string at `key`, None if absent (a key of another type raises WRONGTYPE)."""
        value: bytes | None = self._execute((b"GET", key))
        return value

    def hmget(self, key: bytes, fields: Sequence[str]) -> list[bytes | None]:
        """Return the values of `fields` in the hash at `key`, None for each one absent."""
        values: list[bytes | None] = self._execute((b"HMGET", key, *fields))
        return values

    def close(self) -> None:
        """Give the idle connections back to the client's pool."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            self._pool.release(cast(Any, connection))

    def _execute(self, command: tuple[Any, ...]) -> Any:
        """Send `command` on a kept connection and return its reply (a Redis error raised)."""
        connection = self._checkout()
        try:
            if _PACK is None:  # pragma: no cover - the redis extra installs hiredis
                connection.send_packed_command(connection.pack_command(*command))
            else:
                connection.send_packed_command((_PACK(command),))
            reply = connection.read_response()
        except ResponseError:
            # The error is the reply: the connection is in step.
            self._idle.append((connection, monotonic()))
            raise
        except BaseException:
            # Broken, or interrupted between the command and its reply: never reused as is.
            connection.disconnect()
            self._pool.release(cast(Any, connection))
            raise
        self._idle.append((connection, monotonic()))
        return reply

    def _checkout(self) -> _Connection:
        """Return an idle connection ready for a command, or a new one from the pool."""
        try:
            connection, since = self._idle.pop()
        except IndexError:
            return self._connect()
        if monotonic() - since < _CHECK_AFTER:
            return connection
        try:
            # What the pool checks on every checkout. Data waiting, or a socket the server
            # closed: disconnect, and the connection reconnects on its next send.
            if connection.can_read():
                connection.disconnect()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            connection.disconnect()
        except BaseException:
            self._idle.append((connection, since))
            raise
        return connection

    def _connect(self) -> _Connection:
        """Return a connection from the client's pool, connected and checked by it."""
        return cast(_Connection, self._pool.get_connection())


_KEPT: weakref.WeakSet[KeptConnections] = weakref.WeakSet()


def _forget_in_child() -> None:
    """In a forked child, drop every store's kept connections: their sockets are the parent's."""
    for kept in list(_KEPT):
        kept.forget()


os.register_at_fork(after_in_child=_forget_in_child)


def sync_executor(
    client: Redis, *, autopipeline: bool, replicas: tuple[int, int] | None = None
) -> Commands:
    """Return the sync store's executor: each command on its own (`autopipeline` is async only),
    each write followed by WAIT when `replicas` (count, timeout in ms) is given."""
    del autopipeline  # nothing to batch: a sync caller has one command in flight at a time
    if replicas is not None:
        return PinnedCommands(client, replicas=replicas)
    return KeptConnections(client)


def async_executor(
    client: AsyncRedis, *, autopipeline: bool, replicas: tuple[int, int] | None = None
) -> AsyncCommands:
    """Return the async store's executor: auto-pipelined, or each command on its own; each
    write followed by WAIT on its connection when `replicas` (count, timeout in ms) is given."""
    if replicas is not None:
        return AsyncPinnedCommands(client, replicas=replicas)
    if not autopipeline:
        return AsyncCommands(client)
    from retrysafe.stores._redis_pipeline import AsyncAutoPipeline  # noqa: PLC0415 - async only

    return AsyncAutoPipeline(client)
