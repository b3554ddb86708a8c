"""Commands sent together on one connection to the server that holds a key, for both faces.

`WAIT` counts the replicas that have every write made *on the connection it is sent on*, so
a write and its `WAIT` must share one connection. On one Redis server, a pipeline does that. On
a Redis Cluster, redis-py sends `WAIT` to every master, so the pair goes on a connection of the
master that serves the key's slot. If the slot has moved (`MOVED`), the command did not run:
the client refreshes its map of the slots and sends it again, once. A slot being moved right
now (`ASK`) fails the call as unavailable: the caller fails closed and a retry gets through.

Hand-written for both faces (the cluster clients' node APIs differ): `sync_pinned_exchange`,
`async_pinned_exchange`; the store calls them through `stores/_async/redis_replicas.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import MovedError, ResponseError

__all__ = ["async_pinned_exchange", "sync_pinned_exchange"]

Command = tuple[Any, ...]
_SENDS = 2  # the first send, and one more after a MOVED


def sync_pinned_exchange(client: Any, key: bytes, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` on one connection to the server of `key`; return each reply (a Redis
    error as a value)."""
    from redis.cluster import RedisCluster  # noqa: PLC0415 - only with the redis extra

    if not isinstance(client, RedisCluster):
        return _pipeline(client, commands)
    for send in range(_SENDS):
        node = client.get_node_from_key(key)  # type: ignore[no-untyped-call, unused-ignore]
        replies = _pipeline(client.get_redis_connection(node), commands)
        if not isinstance(replies[0], MovedError) or send + 1 == _SENDS:
            break
        client.nodes_manager.initialize()  # type: ignore[no-untyped-call, unused-ignore]
    return replies


async def async_pinned_exchange(client: Any, key: bytes, commands: Sequence[Command]) -> list[Any]:
    """The async face of `sync_pinned_exchange`."""
    from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - only with the redis extra

    if not isinstance(client, RedisCluster):
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
    await client.initialize()  # a no-op once the client knows the slots
    for send in range(_SENDS):
        node = client.get_node_from_key(key)  # type: ignore[arg-type]  # bytes work too
        replies = await _on_node(node, commands)
        if not isinstance(replies[0], MovedError) or send + 1 == _SENDS:
            break
        await client.nodes_manager.initialize()
    return replies


def _pipeline(client: Any, commands: Sequence[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(pipe.execute(raise_on_error=False))


async def _on_node(node: Any, commands: Sequence[Command]) -> list[Any]:
    """Send `commands` on one connection of a cluster node, read every reply, give it back."""
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
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
