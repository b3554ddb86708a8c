# Generated from stores/_async/redis_commands.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""How the Redis store sends its commands: each on its own, through the client's connection pool.

The async store can batch the commands of concurrent calls instead
(`stores/_redis_pipeline.py`); `stores/_redis_executors.py` picks one for a store.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from redis import Redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

__all__ = ["Commands"]


class Commands:
    """Send each command on its own: a pool checkout and a round trip a command.

    Args:
        client: the redis-py client whose pool the commands go through.
    """

    __slots__ = ("_redis",)

    def __init__(self, client: Redis) -> None:
        self._redis = client

    def evalsha(self, script: Script, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA, loading it first if Redis does not know it.

        Calls EVALSHA directly rather than through the script object, whose generic path
        (pipelines, key and argument copies) costs a few microseconds a call.
        """
        try:
            return self._redis.evalsha(script.sha, 1, key, *args)
        except NoScriptError:
            # A restart or SCRIPT FLUSH since the script was last run: load it, once.
            self._redis.script_load(script.script)
            return self._redis.evalsha(script.sha, 1, key, *args)

    def set_new(self, key: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """SET `key` to `value` unless it exists (expiring in `ttl_ms`, never for 0); return
        what was there (None: it is set). A key of another type raises WRONGTYPE."""
        found = self._redis.set(key, value, nx=True, px=ttl_ms or None, get=True)
        return cast("bytes | None", found)

    def get(self, key: bytes) -> bytes | None:
        """Return the string at `key`, None if absent (a key of another type raises WRONGTYPE)."""
        return cast("bytes | None", self._redis.get(key))

    def hmget(self, key: bytes, fields: Sequence[str]) -> list[bytes | None]:
        """Return the values of `fields` in the hash at `key`, None for each one absent."""
        values = self._redis.hmget(key, fields)
        return cast("list[bytes | None]", values)  # bytes: the client does not decode

    def forget_connections(self) -> list[Any]:
        """Return (and forget) the connections of the executor's own: none, they are the
        client's (the store moves them: `stores/_redis_home.py`)."""
        return []

    def close(self) -> None:
        """Close nothing: the connections are the client's."""
