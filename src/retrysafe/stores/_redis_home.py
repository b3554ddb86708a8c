"""How the Redis stores move to another event loop or process (`stores/_home.py` says why).

`AsyncRedisHome` is the async face's: `moved` tells the store where it is; the store then
forgets, at once, every connection it had (so nothing of it is used again however the move
ends), and leaves them (`leave`: kept in a forked child, else closed as far as their loop allows):

- one server: the client's pool forgets its connections in place (`empty_pool`: what redis-py's
  sync pool does after a fork) and takes a new lock, which asyncio binds to the loop it first
  waits on; so a client of the caller's moves too;
- a cluster: a store built from its URL builds another client and leaves the old one whole
  (`leave_cluster`): its nodes, locks and tasks are the old loop's or the parent's; a client of
  the caller's cannot be built anew, so its nodes forget their connections in place
  (`empty_nodes`), and its locks stay (one bound to the old loop, should it be waited on, makes
  a call fail as unavailable: `stores/_home.py`);
- the auto-pipeline's own connection (`AsyncAutoPipeline.forget_connections`).

`RedisHome` is the sync face's and never moves: redis-py's sync pool follows a fork itself, and
the sync store's kept connections are dropped in a child (`stores/_redis_executors.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from retrysafe.stores._home import INHERITED, AsyncHome

__all__ = ["AsyncRedisHome", "RedisHome"]


class AsyncRedisHome(AsyncHome):
    """Where an async Redis store's connections live, and how they are left (async face)."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("Redis")

    @staticmethod
    def empty_pool(client: Any) -> list[Any]:
        """Make `client`'s pool forget its connections, and return them: the pool opens new
        ones, on this loop, as they are needed."""
        pool = client.connection_pool
        held = [*pool._available_connections, *pool._in_use_connections]
        pool.reset()
        pool._lock = asyncio.Lock()  # a contended lock is bound to the loop it waited on
        if isinstance(getattr(pool, "_condition", None), asyncio.Condition):
            pool._condition = asyncio.Condition()  # `BlockingConnectionPool`'s, likewise
        return held

    @staticmethod
    def empty_nodes(client: Any) -> list[Any]:
        """Make every node of a cluster client forget its connections, and return them: the
        nodes open new ones, on this loop, as they are needed."""
        manager = client.nodes_manager
        nodes = [*manager.nodes_cache.values(), *manager.startup_nodes.values()]
        held = []
        for node in {id(node): node for node in nodes}.values():
            held += node._connections
            node._connections = []
            node._free.clear()
        return held

    @staticmethod
    async def leave(connections: Iterable[Any], *, forked: bool) -> None:
        """Leave redis-py connections of another loop or of the parent process: kept, unused
        and unclosed, if `forked`; else closed as far as their loop allows."""
        if forked:
            INHERITED.keep(*connections)
            return
        for connection in connections:
            # On a closed loop the transport cannot close (asyncio raises), but the connection
            # lets go of it, and the garbage collector closes the socket.
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)

    async def leave_cluster(self, client: Any, *, forked: bool) -> None:
        """Leave a cluster client the store no longer uses: kept whole if `forked`, else its
        nodes' connections closed as far as their loop allows, and the client closed."""
        if forked:
            INHERITED.keep(client)
            return
        await self.leave(self.empty_nodes(client), forked=False)
        with contextlib.suppress(Exception):  # closed already: this marks it so for redis-py
            await client.aclose()


class RedisHome:
    """Where a sync Redis store's connections live: it never moves (see the module)."""

    __slots__ = ()

    def moved(self) -> bool | None:
        """Return None: nothing of the sync store's needs to move."""
        return None

    @staticmethod
    def empty_pool(client: Any) -> list[Any]:
        """Return nothing (never called: the sync store never moves)."""
        return []

    @staticmethod
    def empty_nodes(client: Any) -> list[Any]:
        """Return nothing (never called: the sync store never moves)."""
        return []

    @staticmethod
    def leave(connections: Iterable[Any], *, forked: bool) -> None:
        """Do nothing (never called: the sync store never moves)."""

    def leave_cluster(self, client: Any, *, forked: bool) -> None:
        """Do nothing (never called: the sync store never moves)."""
