"""Commands sent together on one connection to the server that holds a key, for both faces.

On one Redis server a pipeline does that. On a Redis Cluster the commands go on a connection of
the master that serves the key's slot, and the redirections are followed on that same footing:

- `MOVED` (the slot has moved): the command did not run; the client refreshes its map of the
  slots and the commands are sent again to the new master.
- `ASK` (the slot is being moved and the key is already on the target): `ASKING` and the
  commands go together on one connection of the target. (redis-py's async cluster client sends
  `ASKING` on one pooled connection and the command on another, so under load the target
  answers `MOVED` and the call fails: hence this path for every command of the store.)
- A connection error or a timeout (the master died) fails the call and asks the client for a
  refresh of its map, run before the next exchange (at most as often as redis-py allows), so
  calls reach the replica that takes over once it has. The refresh is redis-py's own request
  (`_request_refresh`, `_run_requested_refresh`), what its cluster client does after such an
  error; the tests of a real failover pin it. redis-py has it since 8.2: with an earlier one
  the cluster stores refuse to start (`require_refresh_requests`) rather than fail a call.

Anything else (`TRYAGAIN`, `CLUSTERDOWN`, redirections past `_SENDS`) is the command's reply,
which the store turns into `StoreUnavailableError`: the caller fails closed and a retry gets
through. `WAIT` (replica-safe writes) rides in the same exchange, on the same connection.

Hand-written for both faces (the cluster clients' node APIs differ): `sync_pinned_exchange`,
`async_pinned_exchange`; the stores call them through `stores/_async/redis_replicas.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import AskError, MovedError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe._errors import ConfigurationError
from retrysafe.stores._redis_packing import pack_commands

__all__ = ["Command", "async_pinned_exchange", "require_refresh_requests", "sync_pinned_exchange"]

Command = tuple[Any, ...]
_SENDS = 3  # the first send, and two more after redirections
_ASKING: Command = ("ASKING",)


def require_refresh_requests() -> None:
    """Raise `ConfigurationError` unless redis-py's cluster clients take refresh requests
    (redis-py 8.2 and later), which the exchanges ask for after a lost connection."""
    import redis  # noqa: PLC0415 - only with the redis extra
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster  # noqa: PLC0415
    from redis.cluster import NodesManager  # noqa: PLC0415

    requests = (
        getattr(NodesManager, "_request_refresh", None),
        getattr(NodesManager, "_run_requested_refresh", None),
        getattr(AsyncRedisCluster, "_request_refresh", None),
    )
    if not all(callable(request) for request in requests):
        raise ConfigurationError(
            "The Redis Cluster store needs redis-py 8.2 or later (this is redis-py "
            f"{getattr(redis, '__version__', 'of an unknown version')}): "
            "pip install 'redis>=8.2'"
        )


def sync_pinned_exchange(client: Any, key: bytes, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` on one connection to the server of `key`; return each reply (a Redis
    error as a value)."""
    from redis.cluster import RedisCluster  # noqa: PLC0415 - only with the redis extra

    if not isinstance(client, RedisCluster):
        return _pipeline(client, commands)
    manager: Any = client.nodes_manager
    if manager._refresh_requested:  # an earlier exchange failed: learn the slots first
        manager._run_requested_refresh(client.retry)
    node, asking = client.get_node_from_key(key), False  # type: ignore[no-untyped-call, unused-ignore]
    for _ in range(_SENDS):
        sent = [_ASKING, *commands] if asking else list(commands)
        try:
            server = client.get_redis_connection(_known(node))
            replies = _pipeline(server, sent)[len(sent) - len(commands) :]
        except (RedisConnectionError, RedisTimeoutError):
            manager._request_refresh(last_failed_node_name=getattr(node, "name", None))
            raise
        first = replies[0]
        if isinstance(first, MovedError):
            manager.initialize()
            node, asking = client.get_node_from_key(key), False  # type: ignore[no-untyped-call, unused-ignore]
        elif isinstance(first, AskError):
            node, asking = client.get_node(first.host, first.port), True  # type: ignore[no-untyped-call, unused-ignore]
        else:
            break
    return replies


async def async_pinned_exchange(client: Any, key: bytes, commands: Sequence[Command]) -> list[Any]:
    """The async face of `sync_pinned_exchange`."""
    from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - only with the redis extra

    if not isinstance(client, RedisCluster):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
    await client.initialize()  # a no-op once the client knows the slots, none asked again
    node, asking = client.get_node_from_key(key), False  # type: ignore[arg-type]  # bytes too
    for _ in range(_SENDS):
        sent = [_ASKING, *commands] if asking else list(commands)
        try:
            replies = (await _on_node(node, sent))[len(sent) - len(commands) :]
        except (RedisConnectionError, RedisTimeoutError):
            client._request_refresh(last_failed_node_name=getattr(node, "name", None))
            raise
        first = replies[0]
        if isinstance(first, MovedError):
            await client.nodes_manager.initialize()
            node, asking = client.get_node_from_key(key), False  # type: ignore[arg-type]
        elif isinstance(first, AskError):
            node, asking = client.get_node(first.host, first.port), True
        else:
            break
    return replies


def _pipeline(client: Any, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


async def _on_node(node: Any, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` on one connection of a cluster node, read every reply, give it back."""
    connection = _known(node).acquire_connection()
    try:
        await connection.send_packed_command(pack_commands(connection, commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as error:  # this command's own error: the connection is fine
                replies.append(error)
    except BaseException:
        await connection.disconnect()  # replies left unread: never reused as is
        raise
    finally:
        node.release(connection)
    return replies


def _known(node: Any) -> Any:
    """Return `node`, or raise as a lost connection when the client does not know it yet (a
    redirection to a node its map of the slots lacks): the caller fails closed."""
    if node is None:
        raise RedisConnectionError("The Redis Cluster node serving the key is not known yet.")
    return node
