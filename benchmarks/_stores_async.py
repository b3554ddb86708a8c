"""The async face of benchmarks/stores.py: `open_async_store` beside bare async drivers.

Everything runs on one asyncio event loop (anyio's asyncio backend; uvloop is not in the lock),
started in a blocking portal for the whole face, so the stores and their pools stay on one loop
while `stores.run` drives the rounds. One task awaits the operations one after another, or 16
tasks share the keys. The bare drivers do the round trips the stores do: PostgreSQL through a
psycopg `AsyncConnectionPool` in autocommit, MySQL through an aiomysql pool in autocommit,
Redis through `redis.asyncio`, SQLite through the stdlib `sqlite3` on anyio's worker threads
(`anyio.to_thread.run_sync`, one hop per statement, as aiosqlite is no dependency), memory
through a dict. `sqlite_connector` and `mysql_connector` serve the sync face's bare drivers too.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiomysql  # type: ignore[import-untyped]
import anyio
import anyio.to_thread
import pymysql  # type: ignore[import-untyped]
import redis.asyncio as aioredis
from anyio.from_thread import BlockingPortal, start_blocking_portal
from psycopg_pool import AsyncConnectionPool

import retrysafe
from retrysafe import AsyncStore, Identity
from retrysafe.stores._sql.mysql import render
from retrysafe.stores._sql.mysql_connection import parse_url

if TYPE_CHECKING:
    from stores import Workload

Operation = Callable[[str], Awaitable[None]]


@dataclass
class AsyncOps:
    """The three operations of a variant, async: first-time, replay (claim), get."""

    first: Operation
    replay: Operation
    get: Operation
    aclose: Callable[[], Awaitable[None]]


async def _nothing() -> None:
    """Close what holds nothing."""


def bare_memory(w: Workload) -> AsyncOps:
    """A dict: one event loop needs no lock."""
    data: dict[str, tuple[str, bytes | None]] = {}

    async def first(key: str) -> None:
        data.setdefault(key, ("in_flight", None))
        data[key] = ("done", w.outcome)

    async def replay(key: str) -> None:
        data.setdefault(key, ("in_flight", None))

    async def get(key: str) -> None:
        data.get(key)

    return AsyncOps(first, replay, get, _nothing)


def sqlite_connector(
    path: Path, create: str
) -> tuple[Callable[[], sqlite3.Connection], Callable[[], None]]:
    """Return (this thread's connection, close all): sqlite3 in WAL, a connection per thread.

    Both faces' bare SQLite drivers use it: the sync face's threads, the async face's workers.
    """
    local = threading.local()
    connections: list[sqlite3.Connection] = []

    def conn() -> sqlite3.Connection:
        if not hasattr(local, "conn"):
            local.conn = sqlite3.connect(
                path, timeout=5, isolation_level=None, check_same_thread=False
            )
            local.conn.execute("PRAGMA journal_mode=WAL")
            local.conn.execute("PRAGMA synchronous=FULL")
            connections.append(local.conn)
        return local.conn  # type: ignore[no-any-return]

    def close() -> None:
        for connection in connections:
            connection.close()

    conn().execute(create)
    return conn, close


def mysql_login(url: str) -> dict[str, Any]:
    """Return the host, port, user, password and database of a `mysql://` URL."""
    options = parse_url(url)
    return {
        "host": options.host,
        "port": options.port,
        "user": options.user,
        "password": options.password,
        "database": options.database,
    }


def mysql_connector(
    url: str,
) -> tuple[Callable[[], AbstractContextManager[Any]], Callable[[], None]]:
    """Return (a checkout of a pooled connection, close all): PyMySQL in autocommit, several
    statements a query allowed. PyMySQL has no pool: this one opens a connection when none is
    idle (so at most one per concurrent caller) and keeps the ones given back."""
    idle: list[Any] = []  # pop and append are atomic: no lock
    opened: list[Any] = []

    @contextmanager
    def connection() -> Iterator[Any]:
        try:
            conn = idle.pop()
        except IndexError:
            conn = pymysql.connect(
                **mysql_login(url),
                autocommit=True,
                client_flag=pymysql.constants.CLIENT.MULTI_STATEMENTS,
            )
            opened.append(conn)
        try:
            yield conn
        finally:
            idle.append(conn)

    def close() -> None:
        for conn in opened:
            conn.close()

    return connection, close


def bare_sqlite(w: Workload, path: Path) -> AsyncOps:
    """sqlite3 on anyio's worker threads, a connection per thread: INSERT, UPDATE; SELECT."""
    conn, close = sqlite_connector(path, w.sqlite_create)

    def insert(key: str) -> None:
        conn().execute(w.sqlite_insert, (key,))

    def complete(key: str) -> None:
        conn().execute(w.sqlite_complete, (w.outcome, key))

    def select(key: str) -> None:
        conn().execute(w.sqlite_get, (key,)).fetchone()

    async def first(key: str) -> None:
        await anyio.to_thread.run_sync(insert, key)
        await anyio.to_thread.run_sync(complete, key)

    async def replay(key: str) -> None:
        await anyio.to_thread.run_sync(select, key)

    async def aclose() -> None:
        close()

    return AsyncOps(first, replay, replay, aclose)


async def bare_postgres(w: Workload, table: str) -> AsyncOps:
    """psycopg's async pool in autocommit: INSERT ... ON CONFLICT, UPDATE; claim; SELECT."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        w.postgres_url, min_size=1, max_size=16, open=False, kwargs={"autocommit": True}
    )
    await pool.open()
    insert, complete, claim, read = (
        s.format(table=table)
        for s in (w.postgres_insert, w.postgres_complete, w.postgres_claim, w.postgres_get)
    )
    async with pool.connection() as c:
        await c.execute(w.postgres_create.format(table=table))

    async def first(key: str) -> None:
        async with pool.connection() as c:
            await c.execute(insert, {"id": key})
        async with pool.connection() as c:
            await c.execute(complete, {"id": key, "outcome": w.outcome})

    async def replay(key: str) -> None:
        async with pool.connection() as c:
            await (await c.execute(claim, {"id": key})).fetchone()

    async def get(key: str) -> None:
        async with pool.connection() as c:
            await (await c.execute(read, {"id": key})).fetchone()

    return AsyncOps(first, replay, get, pool.close)


async def bare_mysql(w: Workload, table: str) -> AsyncOps:
    """aiomysql's pool in autocommit: INSERT ... ON DUPLICATE KEY UPDATE, UPDATE; that INSERT
    and a SELECT as one query; SELECT. Values are written in as literals, as the store does
    (`render`): aiomysql's own escaping of bytes fails with PyMySQL 1.2."""
    login = mysql_login(w.mysql_url)
    login["db"] = login.pop("database")
    pool = await aiomysql.create_pool(minsize=1, maxsize=16, autocommit=True, **login)
    insert, complete, read = (
        s.format(table=table) for s in (w.mysql_insert, w.mysql_complete, w.mysql_get)
    )
    claim = f"{insert}; {read}"
    async with pool.acquire() as c, c.cursor() as cursor:
        await cursor.execute(w.mysql_create.format(table=table))

    async def first(key: str) -> None:
        async with pool.acquire() as c, c.cursor() as cursor:
            await cursor.execute(render(c, insert, {"id": key}))
        async with pool.acquire() as c, c.cursor() as cursor:
            await cursor.execute(render(c, complete, {"id": key, "outcome": w.outcome}))

    async def replay(key: str) -> None:
        async with pool.acquire() as c, c.cursor() as cursor:
            await cursor.execute(render(c, claim, {"id": key}))
            await cursor.nextset()
            await cursor.fetchone()

    async def get(key: str) -> None:
        async with pool.acquire() as c, c.cursor() as cursor:
            await cursor.execute(render(c, read, {"id": key}))
            await cursor.fetchone()

    async def aclose() -> None:
        pool.close()
        await pool.wait_closed()

    return AsyncOps(first, replay, get, aclose)


def bare_redis(w: Workload, prefix: str) -> AsyncOps:
    """redis.asyncio: SET NX then SET; SET NX GET (a claim that finds the value); GET."""
    client = aioredis.Redis.from_url(w.redis_url)
    px = int(w.retention * 1000)

    async def first(key: str) -> None:
        await client.set(f"{prefix}:{key}", b"in_flight", nx=True, px=px)
        await client.set(f"{prefix}:{key}", w.outcome, px=px)

    async def replay(key: str) -> None:
        await client.set(f"{prefix}:{key}", b"in_flight", nx=True, px=px, get=True)

    async def get(key: str) -> None:
        await client.get(f"{prefix}:{key}")

    return AsyncOps(first, replay, get, client.aclose)


def store_ops(w: Workload, store: AsyncStore) -> AsyncOps:
    """The same operations through a retrysafe async store."""

    async def first(key: str) -> None:
        identity = Identity("bench", "scope", key)
        claim = await store.claim(identity, "fp", lease=w.lease, retention=w.retention)
        await store.complete(identity, claim.token, w.outcome, retention=w.retention)

    async def replay(key: str) -> None:
        identity = Identity("bench", "scope", key)
        claim = await store.claim(identity, "fp", lease=w.lease, retention=w.retention)
        if claim.acquired:
            raise RuntimeError(f"a replay of {key!r} claimed the key: it found no outcome")

    async def get(key: str) -> None:
        await store.get(Identity("bench", "scope", key))

    return AsyncOps(first, replay, get, store.aclose)


async def measure(operation: Operation, keys: list[str], tasks: int) -> tuple[float, float]:
    """Await `operation` over `keys` from `tasks` tasks; return (ops/s, CPU seconds per op)."""
    start, cpu = time.perf_counter(), time.process_time()
    if tasks == 1:
        for key in keys:
            await operation(key)
    else:
        shared = iter(keys)  # each task takes the next key; one loop, so no lock

        async def worker() -> None:
            for key in shared:
                await operation(key)

        async with anyio.create_task_group() as group:
            for _ in range(tasks):
                group.start_soon(worker)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(keys) / elapsed, cpu / len(keys)


class AsyncFace:
    """The async face: `open_async_store`, driven on the portal's event loop."""

    def __init__(self, portal: BlockingPortal, variants: dict[str, AsyncOps]) -> None:
        self.portal = portal
        self.variants = variants

    def measure(
        self, variant: str, operation: str, keys: list[str], workers: int
    ) -> tuple[float, float]:
        """Run `operation` of `variant` over `keys` with `workers` tasks, on the loop."""
        call: Operation = getattr(self.variants[variant], operation)
        return self.portal.call(measure, call, keys, workers)


async def _open(
    backend: str, workdir: Path, name: str, urls: dict[str, str], w: Workload
) -> dict[str, AsyncOps]:
    """Open the bare driver and each retrysafe variant, on the running loop."""
    if backend == "memory":
        bare = bare_memory(w)
    elif backend == "sqlite":
        bare = bare_sqlite(w, workdir / f"{name}.db")
    elif backend == "postgres":
        bare = await bare_postgres(w, name)
    elif backend == "mysql":
        bare = await bare_mysql(w, name)
    elif backend == "redis":
        bare = bare_redis(w, name)
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    variants = {"bare": bare}
    for variant, url in urls.items():
        variants[variant] = store_ops(w, retrysafe.open_async_store(url))
    return variants


@contextmanager
def async_face(
    backend: str, workdir: Path, name: str, urls: dict[str, str], w: Workload
) -> Iterator[AsyncFace]:
    """Yield the async face of `backend` on an event loop of its own, closed afterwards."""
    with start_blocking_portal("asyncio") as portal:
        variants = portal.call(_open, backend, workdir, name, urls, w)
        try:
            yield AsyncFace(portal, variants)
        finally:
            for ops in variants.values():
                portal.call(ops.aclose)
