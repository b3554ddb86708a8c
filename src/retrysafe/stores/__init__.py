"""Stores: where idempotency records live, built from a URL.

| URL                         | store                                   |
|-----------------------------|-----------------------------------------|
| `memory://`                 | `MemoryStore` / `AsyncMemoryStore`      |
| `sqlite:///path/to.db`      | `SQLiteStore` / `AsyncSQLiteStore`      |
| `postgresql://user@host/db` | `PostgresStore` / `AsyncPostgresStore`  |
| `redis://host:6379/0`       | `RedisStore` / `AsyncRedisStore`        |
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from retrysafe._clock import Clock
from retrysafe._errors import ConfigurationError
from retrysafe.stores.base import AsyncStore, Store, StoreStats

__all__ = ["AsyncStore", "Store", "StoreStats", "open_async_store", "open_store"]

# scheme -> (module, sync class, async class, extra that brings the driver)
_BACKENDS: dict[str, tuple[str, str, str, str | None]] = {
    "memory": ("memory", "MemoryStore", "AsyncMemoryStore", None),
    "sqlite": ("sqlite", "SQLiteStore", "AsyncSQLiteStore", None),
    "postgresql": ("postgres", "PostgresStore", "AsyncPostgresStore", "postgres"),
    "postgres": ("postgres", "PostgresStore", "AsyncPostgresStore", "postgres"),
    "redis": ("redis", "RedisStore", "AsyncRedisStore", "redis"),
    "rediss": ("redis", "RedisStore", "AsyncRedisStore", "redis"),
}


def _store_class(url: str, *, sync: bool) -> Any:
    scheme = urlsplit(url).scheme
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigurationError(f"Unknown store URL scheme in {url!r}; use one of {known}.")
    module_name, sync_class, async_class, extra = backend
    try:
        module = importlib.import_module(f"retrysafe.stores.{module_name}")
    except ImportError as error:
        if extra is None:
            raise
        raise ConfigurationError(
            f"The {module_name} store needs the '{extra}' extra: "
            f"pip install 'retrysafe[{extra}]' ({error})."
        ) from error
    return getattr(module, sync_class if sync else async_class)


def open_store(url: str, *, clock: Clock | None = None) -> Store:
    """Return a sync store for `url` (see the table above).

    Args:
        url: the store URL; its query string carries backend options.
        clock: the time source (default: the system clock).
    """
    store: Store = _store_class(url, sync=True).from_url(url, clock=clock)
    return store


def open_async_store(url: str, *, clock: Clock | None = None) -> AsyncStore:
    """Return an async store for `url` (see the table above); the arguments are `open_store`'s."""
    store: AsyncStore = _store_class(url, sync=False).from_url(url, clock=clock)
    return store
