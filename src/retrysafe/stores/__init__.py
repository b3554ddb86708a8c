"""Stores: where idempotency records live, built from a URL.

| URL                         | store                                   |
|-----------------------------|-----------------------------------------|
| `memory://`                 | `MemoryStore` / `AsyncMemoryStore`      |
| `sqlite:///path/to.db`      | `SQLiteStore` / `AsyncSQLiteStore`      |
| `postgresql://user@host/db` | `PostgresStore` / `AsyncPostgresStore`  |
| `mysql://user@host/db`      | `MySQLStore` / `AsyncMySQLStore`        |
| `redis://host:6379/0`       | `RedisStore` / `AsyncRedisStore`        |
| `redis+cluster://h:p,h:p/`  | `RedisClusterStore` / `AsyncRedisClusterStore` |

On any of them, `replay_cache=N` (with `replay_cache_bytes` and `replay_cache_ttl`) puts a
`ReplayCache` in front: completed records kept in memory, so a replay needs no round trip.
`encryption_key_env=NAME` (or `encryption=Keyring(...)`) puts an `EncryptedStore` between
them: outcomes encrypted at rest with the keys in that environment variable (docs/encryption.md).
`backend_url` gives the URL without these options, as the store itself gets it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from retrysafe._clock import Clock
from retrysafe._encryption import Keyring
from retrysafe._errors import ConfigurationError
from retrysafe._urls import redact_url
from retrysafe.stores._async.cached import AsyncReplayCache
from retrysafe.stores._async.encrypted import AsyncEncryptedStore
from retrysafe.stores._sync.cached import ReplayCache
from retrysafe.stores._sync.encrypted import EncryptedStore
from retrysafe.stores.base import AsyncStore, Store, StoreStats, query_options

__all__ = ["AsyncStore", "Store", "StoreStats", "backend_url", "open_async_store", "open_store"]

# scheme -> (module, sync class, async class, extra that brings the driver)
_BACKENDS: dict[str, tuple[str, str, str, str | None]] = {
    "memory": ("memory", "MemoryStore", "AsyncMemoryStore", None),
    "sqlite": ("sqlite", "SQLiteStore", "AsyncSQLiteStore", None),
    "postgresql": ("postgres", "PostgresStore", "AsyncPostgresStore", "postgres"),
    "postgres": ("postgres", "PostgresStore", "AsyncPostgresStore", "postgres"),
    "mysql": ("mysql", "MySQLStore", "AsyncMySQLStore", "mysql"),
    "redis": ("redis", "RedisStore", "AsyncRedisStore", "redis"),
    "rediss": ("redis", "RedisStore", "AsyncRedisStore", "redis"),
    "redis+cluster": ("redis", "RedisClusterStore", "AsyncRedisClusterStore", "redis"),
    "rediss+cluster": ("redis", "RedisClusterStore", "AsyncRedisClusterStore", "redis"),
}


def _store_class(url: str, *, sync: bool) -> Any:
    scheme = urlsplit(url).scheme
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{s}://" for s in _BACKENDS)
        raise ConfigurationError(
            f"Unknown store URL scheme in {redact_url(url)!r}; use one of {known}."
        )
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


@contextlib.contextmanager
def _invalid_url(url: str) -> Iterator[None]:
    """Turn a `ValueError` that parsing `url` raised (`Invalid IPv6 URL`, a port out of range)
    into a `ConfigurationError` that names the URL, its password masked."""
    try:
        yield
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(f"Invalid store URL {redact_url(url)!r}: {error}") from None


def open_store(url: str, *, clock: Clock | None = None, encryption: Keyring | None = None) -> Store:
    """Return a sync store for `url` (see the table above).

    Args:
        url: the store URL; its query string carries backend options.
        clock: the time source (default: the system clock).
        encryption: the keys that encrypt outcomes at rest, instead of the URL's
            `encryption_key_env` (default: none, outcomes stored in clear).
    """
    with _invalid_url(url):
        url, keyring, cache = _wrapping(url, encryption)
        store: Store = _store_class(url, sync=True).from_url(url, clock=clock)
    store = store if keyring is None else EncryptedStore(store, keyring)
    return ReplayCache(store, **cache) if cache else store


def open_async_store(
    url: str, *, clock: Clock | None = None, encryption: Keyring | None = None
) -> AsyncStore:
    """Return an async store for `url` (see the table above); the arguments are `open_store`'s."""
    with _invalid_url(url):
        url, keyring, cache = _wrapping(url, encryption)
        store: AsyncStore = _store_class(url, sync=False).from_url(url, clock=clock)
    store = store if keyring is None else AsyncEncryptedStore(store, keyring)
    return AsyncReplayCache(store, **cache) if cache else store


def backend_url(url: str) -> str:
    """Return the store URL `url` as `open_store` hands it to the store: without the options
    of the wrappers around it (`replay_cache`, `replay_cache_bytes`, `replay_cache_ttl`,
    `encryption_key_env`), for code that reaches the store's database itself.

    The options are removed, not checked (`open_store` checks them); a URL without any is
    returned as it is.

    Args:
        url: a store URL, as `open_store` takes it.
    """
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    wrappers = {_ENCRYPTION_OPTION, *_REPLAY_CACHE_OPTIONS}
    if not any(name in wrappers for name, _ in pairs):
        return url
    return _without(url, pairs, wrappers)


_ENCRYPTION_OPTION = "encryption_key_env"


def _wrapping(url: str, given: Keyring | None) -> tuple[str, Keyring | None, dict[str, Any]]:
    """Return `url` without the options of the wrappers around its store, the encryption's
    keys (None: outcomes in clear) and the replay cache's arguments (none: no cache)."""
    url, keyring = _encryption_option(url, given)
    url, cache = _replay_cache_options(url)
    return url, keyring, cache


def _encryption_option(url: str, given: Keyring | None) -> tuple[str, Keyring | None]:
    """Return `url` without `encryption_key_env`, and the keyring: given, or that variable's."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    names = [value for name, value in pairs if name == _ENCRYPTION_OPTION]
    if not names:
        return url, given
    if given is not None or len(names) > 1:
        raise ConfigurationError(
            "Give the encryption keys once, as encryption= or one "
            f"{_ENCRYPTION_OPTION}: {redact_url(url)!r}."
        )
    return _without(url, pairs, {_ENCRYPTION_OPTION}), Keyring.from_env(names[0])


def _without(url: str, pairs: list[tuple[str, str]], names: set[str]) -> str:
    """Return `url` with its query string's `pairs` but those named `names`."""
    rest = [(name, value) for name, value in pairs if name not in names]
    base = url.split("?", 1)[0]  # not urlunsplit: it turns sqlite:///x into sqlite:/x
    return f"{base}?{urlencode(rest)}" if rest else base


_REPLAY_CACHE_OPTIONS = {"replay_cache": int, "replay_cache_bytes": int, "replay_cache_ttl": float}
_REPLAY_CACHE_ARGUMENTS = {
    "replay_cache": "max_records",
    "replay_cache_bytes": "max_bytes",
    "replay_cache_ttl": "ttl",
}


def _replay_cache_options(url: str) -> tuple[str, dict[str, Any]]:
    """Return `url` without the replay cache's options, and the cache's arguments (none: no
    cache)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    ours = [(name, value) for name, value in pairs if name in _REPLAY_CACHE_OPTIONS]
    if not ours:
        return url, {}
    options = query_options(urlencode(ours), _REPLAY_CACHE_OPTIONS, url=url)
    if "replay_cache" not in options:
        raise ConfigurationError(
            "replay_cache_bytes and replay_cache_ttl come with replay_cache=N: "
            f"{redact_url(url)!r}."
        )
    stripped = _without(url, pairs, set(_REPLAY_CACHE_OPTIONS))
    if options["replay_cache"] == 0:  # said explicitly: no cache
        return stripped, {}
    return stripped, {_REPLAY_CACHE_ARGUMENTS[name]: value for name, value in options.items()}
