"""Stores filled by the previous release, 0.1.0 (B39): a copy for each test.

`data/store_010.db` is a SQLite store that 0.1.0 filled (`data/fill_010.py`); for PostgreSQL
and Redis, `data/postgres_010.json` and `data/redis_010.json` hold what 0.1.0 wrote to a table
and a key prefix, byte for byte, loaded here into a table or prefix of the test's own (under
0.1.0's own schema statements; a Redis key's time to live less the time since it was filled).
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import delete_redis_prefix, drop_postgres_tables, unique_name

DATA = Path(__file__).parent / "data"


def _stored(value: Any) -> Any:
    """A stored value from its JSON form (bytes as {"b64": ...})."""
    if isinstance(value, dict):
        return base64.b64decode(value["b64"])
    return value


def _load_postgres(url: str, table: str) -> None:
    import psycopg

    dumped = json.loads((DATA / "postgres_010.json").read_text())
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in dumped["schema"]:
            conn.execute(statement.replace(dumped["table"], table))
        for row in dumped["rows"]:
            names = ", ".join(row)
            marks = ", ".join(["%s"] * len(row))
            conn.execute(
                f'INSERT INTO "{table}" ({names}) VALUES ({marks})',  # noqa: S608 - test data
                [_stored(value) for value in row.values()],
            )


def _load_redis(url: str, prefix: str) -> None:
    import redis

    dumped = json.loads((DATA / "redis_010.json").read_text())
    elapsed_ms = int((time.time() - dumped["filled_at"]) * 1000)
    client = redis.Redis.from_url(url)
    try:
        for entry in dumped["keys"]:
            key = prefix + entry["key"].removeprefix(dumped["prefix"])
            ttl = entry["pttl"] - elapsed_ms if entry["pttl"] > 0 else None
            assert entry["type"] == "string", entry
            client.set(key, _stored(entry["value"]), px=ttl)
    finally:
        client.close()


_SERVERS: dict[str, tuple[str, Callable[[str, str], None], str, Callable[[str, str], None]]] = {
    "postgres": ("postgres_url", _load_postgres, "table", drop_postgres_tables),
    "redis": ("redis_url", _load_redis, "prefix", delete_redis_prefix),
}
"""Per server: the fixture of its URL, the loader, the URL's option naming the test's own
table or prefix, and what removes it after."""


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def previous_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a store holding what 0.1.0 wrote (`data/cases.py`), a copy of its own."""
    if request.param == "sqlite":
        shutil.copyfile(DATA / "store_010.db", tmp_path / "store.db")
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        fixture, load, option, remove = _SERVERS[request.param]
        base: str = request.getfixturevalue(fixture)
        name = unique_name()
        try:
            load(base, name)
            yield f"{base}?{option}={name}"
        finally:
            remove(base, name)
