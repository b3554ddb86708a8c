"""Fresh, empty stores for tests: each kind by URL, cleaned up afterwards.

Memory and SQLite need nothing; Redis and PostgreSQL use the server the user names with
`--retrysafe-redis-url` / `--retrysafe-postgres-url` (or the `retrysafe_redis_url` /
`retrysafe_postgres_url` ini options). Each test gets a key prefix or a table of its own, so
tests running at the same time on one server never see each other's records.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

__all__ = ["KINDS", "SERVERS", "StoreKind", "configured_kinds", "fresh_store_url", "server_url"]

StoreKind = Literal["memory", "sqlite", "redis", "postgres"]
KINDS: tuple[StoreKind, ...] = ("memory", "sqlite", "redis", "postgres")
SERVERS: dict[str, str] = {"redis": "Redis", "postgres": "PostgreSQL"}
"""The kinds that need a server the user names, and the server's name."""
_EXAMPLES = {"redis": "redis://127.0.0.1:6379/0", "postgres": "postgresql://user@127.0.0.1/db"}


def server_url(config: pytest.Config, kind: str) -> str | None:
    """The server URL given for `kind` on the command line, else in the ini file, else None."""
    option = config.getoption(f"retrysafe_{kind}_url", None)
    return str(option or config.getini(f"retrysafe_{kind}_url") or "") or None


def configured_kinds(config: pytest.Config) -> list[StoreKind]:
    """The kinds a test can have here: memory and SQLite, and each server that was named."""
    return [kind for kind in KINDS if kind not in SERVERS or server_url(config, kind)]


def _required(config: pytest.Config, kind: str) -> str:
    url = server_url(config, kind)
    if url is None:
        pytest.skip(
            f"no {SERVERS[kind]} for a retrysafe {kind} store: pass"
            f" --retrysafe-{kind}-url={_EXAMPLES[kind]} or set retrysafe_{kind}_url in the"
            " pytest configuration"
        )
    return url


def _query(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


@contextlib.contextmanager
def fresh_store_url(kind: str, config: pytest.Config, tmp_path: Path) -> Iterator[str]:
    """Yield the URL of a fresh, empty store of `kind`; remove what it created afterwards."""
    name = f"retrysafe_test_{secrets.token_hex(6)}"
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'retrysafe.db'}"
    elif kind in _SERVERS:
        option, forget = _SERVERS[kind]
        base = _required(config, kind)
        try:
            yield _query(base, f"{option}={name}")
        finally:
            forget(base, name)
    else:
        raise ValueError(f"unknown store kind {kind!r}; expected one of {', '.join(KINDS)}")


def _forget_redis_prefix(url: str, prefix: str) -> None:
    import redis  # noqa: PLC0415 - only Redis stores need the driver

    with redis.Redis.from_url(url.split("?", 1)[0]) as client:
        doomed = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if doomed:
            client.delete(*doomed)


def _forget_postgres_table(url: str, table: str) -> None:
    import psycopg  # noqa: PLC0415 - only PostgreSQL stores need the driver
    from psycopg import sql  # noqa: PLC0415

    drop = sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table))
    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        conn.execute(drop)


# A server store's own part of the server (a key prefix, a table), and how it is removed.
_SERVERS: dict[str, tuple[str, Callable[[str, str], None]]] = {
    "redis": ("prefix", _forget_redis_prefix),
    "postgres": ("table", _forget_postgres_table),
}
