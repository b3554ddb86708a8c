"""The Redis stores: `redis://host:6379/0` (one server) and `redis+cluster://host:port,.../`.

Production: many app instances sharing one Redis, or a Redis Cluster.

Needs the `redis` extra (`pip install 'retrysafe[redis]'`): redis-py, with hiredis.
"""

from retrysafe._extras import missing_extra

try:
    from retrysafe.stores._async.redis import AsyncRedisStore
    from retrysafe.stores._async.redis_cluster import AsyncRedisClusterStore
    from retrysafe.stores._sync.redis import RedisStore
    from retrysafe.stores._sync.redis_cluster import RedisClusterStore
except ImportError as error:
    raise missing_extra("The Redis store", "redis", error) from error

__all__ = ["AsyncRedisClusterStore", "AsyncRedisStore", "RedisClusterStore", "RedisStore"]
