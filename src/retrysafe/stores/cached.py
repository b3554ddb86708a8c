"""The replay cache (`?replay_cache=N` on any store URL): completed records kept in memory."""

from retrysafe.stores._async.cached import AsyncReplayCache
from retrysafe.stores._sync.cached import ReplayCache

__all__ = ["AsyncReplayCache", "ReplayCache"]
