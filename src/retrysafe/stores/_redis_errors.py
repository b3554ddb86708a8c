"""How the Redis stores turn redis-py's errors into retrysafe's, and the replica shortfall.

Unreachable, slow, or a cluster that cannot serve the key right now (failing over, a slot
moving, a shard without its master) is `StoreUnavailableError`: the caller fails closed and a
retry may succeed, and so is a connection of another event loop, which asyncio complains of with
a `RuntimeError` (`stores/_home.py`). Any other Redis error is `StoreError`.
"""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe._errors import ReplicaShortfallError, StoreError, StoreUnavailableError
from retrysafe.stores._home import ErrorsAs, raise_unusable

__all__ = ["ReplicaShortfallError", "translate_errors"]

_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    AskError,
    MovedError,
    SlotNotCoveredError,
    RedisClusterException,
)


class _TranslateErrors(ErrorsAs):
    """The context manager behind `translate_errors`."""

    __slots__ = ()

    def translate(self, error: BaseException) -> None:
        if isinstance(error, _UNAVAILABLE):
            raise StoreUnavailableError(f"Redis is unavailable: {error}") from error
        if isinstance(error, RedisError):
            raise StoreError(f"Redis failed: {error}") from error
        raise_unusable(error, "Redis")


_TRANSLATE_ERRORS = _TranslateErrors()


def translate_errors() -> _TranslateErrors:
    """Turn redis-py errors into retrysafe's: unreachable or slow is `StoreUnavailableError`,
    and so is a connection of another event loop."""
    return _TRANSLATE_ERRORS
