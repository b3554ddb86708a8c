"""The in-memory store (`memory://`): one process, no set-up."""

from retrysafe.stores._async.memory import AsyncMemoryStore
from retrysafe.stores._sync.memory import MemoryStore

__all__ = ["AsyncMemoryStore", "MemoryStore"]
