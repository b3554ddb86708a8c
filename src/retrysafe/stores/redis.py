"""The Redis store (`redis://host:6379/0`): production, many app instances sharing one Redis.

Needs the `redis` extra (`pip install 'retrysafe[redis]'`): redis-py, with hiredis.
"""

from retrysafe.stores._async.redis import AsyncRedisStore
from retrysafe.stores._sync.redis import RedisStore

__all__ = ["AsyncRedisStore", "RedisStore"]
