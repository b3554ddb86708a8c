"""Which executor sends a Redis store's commands, by colour: `sync_executor`, `async_executor`.

The store is written once (`_async/redis.py`; `_sync/redis.py` is generated from it) and asks
here for its executor. A sync caller waits for each reply before its next command, so the sync
store sends each command on its own; the async store batches the commands of concurrent calls
(`_redis_pipeline.py`) unless told not to. That module is async only: it is imported when an
async store asks for it, never by the sync face.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe.stores._async.redis_commands import AsyncCommands
from retrysafe.stores._sync.redis_commands import Commands

if TYPE_CHECKING:
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

__all__ = ["async_executor", "sync_executor"]


def sync_executor(client: Redis, *, autopipeline: bool) -> Commands:
    """Return the sync store's executor: each command on its own (`autopipeline` is async only)."""
    del autopipeline  # nothing to batch: a sync caller has one command in flight at a time
    return Commands(client)


def async_executor(client: AsyncRedis, *, autopipeline: bool) -> AsyncCommands:
    """Return the async store's executor: auto-pipelined, or each command on its own."""
    if not autopipeline:
        return AsyncCommands(client)
    from retrysafe.stores._redis_pipeline import AsyncAutoPipeline  # noqa: PLC0415 - async only

    return AsyncAutoPipeline(client)
