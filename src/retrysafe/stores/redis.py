"""The Redis store (`redis://host:6379/0`): production, many app instances sharing one Redis.

Needs the `redis` extra (`pip install 'retrysafe[redis]'`): redis-py, with hiredis.
"""

from retrysafe._extras import missing_extra

try:
    from retrysafe.stores._async.redis import AsyncRedisStore
    from retrysafe.stores._sync.redis import RedisStore
except ImportError as error:
    raise missing_extra("The Redis store", "redis", error) from error

__all__ = ["AsyncRedisStore", "RedisStore"]
