"""Store throughput: retrysafe's claim + complete and replays against the bare driver.

    .venv/bin/python benchmarks/stores.py [--ops 2000] [--rounds 3] [--face sync|async|both]
        [--backends memory,sqlite,postgres,mysql,redis] [--replay-cache 10000]

For each store and each face (sync: `open_store`, driven by 1 thread and by 16; async:
`open_async_store`, driven by 1 task and by 16 concurrent tasks on one asyncio loop, in
`_stores_async.py`), in one run: claim + complete (a first-time request), a claim that finds
the outcome (a replay, the HTTP replay path) and `get`, side by side with the bare driver doing
the same round trips, and with the same store behind a replay cache (`?replay_cache=N`; 0 leaves
that variant out). The bare drivers: SQLite INSERT + UPDATE and SELECT (stdlib sqlite3; the
async face calls it through `anyio.to_thread`, as aiosqlite is no dependency); PostgreSQL
INSERT ... ON CONFLICT + UPDATE, one statement that inserts or returns the row, and SELECT
(psycopg pools); MySQL INSERT ... ON DUPLICATE KEY UPDATE + UPDATE, that INSERT and a SELECT
sent as one query, and SELECT (PyMySQL through a small pool of the benchmark's, aiomysql's
pool); Redis SET NX + SET, SET NX GET and GET (redis-py, `redis.asyncio`); memory: a dict
(under a lock for threads). Each figure is throughput and the benchmark process's CPU time
per operation (`time.process_time`), steadier than throughput on a shared machine. Variants
alternate within each round and rounds repeat; the median of the rounds is reported. Uses
PostgreSQL, MariaDB (or MySQL) and Redis at RETRYSAFE_TEST_POSTGRES_URL /
RETRYSAFE_TEST_MYSQL_URL / RETRYSAFE_TEST_REDIS_URL (default: loopback).
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import _stores_async
import psycopg
import redis
from psycopg_pool import ConnectionPool

import retrysafe
from retrysafe import Identity, Store

POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MYSQL_URL = os.environ.get("RETRYSAFE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
OPERATIONS = {"first": "claim+complete", "replay": "replay (claim)", "get": "replay (get)"}
"""What each face measures: the `Ops` attribute and its label in the table."""
WORKERS = (1, 16)
CACHED = "retrysafe+cache"


@dataclass(frozen=True)
class Workload:
    """What both faces' operations agree on: the outcome, the store options, the bare SQL."""

    outcome: bytes = b'{"status":201,"body":"' + b"x" * 200 + b'"}'
    lease: float = 30.0
    retention: float = 3600.0
    postgres_url: str = POSTGRES_URL
    redis_url: str = REDIS_URL
    mysql_url: str = MYSQL_URL
    # The bare drivers' statements ({table} is the benchmark's own table). A claim that finds
    # the row is one statement that inserts or returns it, as the PostgreSQL store's claim is.
    postgres_create: str = "CREATE TABLE {table} (id TEXT PRIMARY KEY, state TEXT, outcome BYTEA)"
    postgres_insert: str = (
        "INSERT INTO {table} (id, state) VALUES (%(id)s, 'in_flight') ON CONFLICT (id) DO NOTHING"
    )
    postgres_complete: str = (
        "UPDATE {table} SET state = 'done', outcome = %(outcome)s WHERE id = %(id)s"
    )
    postgres_claim: str = (
        "WITH found AS (SELECT state, outcome FROM {table} WHERE id = %(id)s), "
        "claimed AS (INSERT INTO {table} (id, state) SELECT %(id)s, 'in_flight' "
        "WHERE NOT EXISTS (SELECT FROM found) ON CONFLICT (id) DO NOTHING "
        "RETURNING state, outcome) "
        "SELECT state, outcome FROM claimed UNION ALL SELECT state, outcome FROM found"
    )
    postgres_get: str = "SELECT state, outcome FROM {table} WHERE id = %(id)s"
    # MySQL: no statement inserts or returns a row, so the bare claim that finds one is the
    # insert and a read sent as one query (one round trip, as the store's claim is).
    mysql_create: str = (
        "CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, state VARCHAR(16), outcome BLOB)"
        " ENGINE = InnoDB"
    )
    mysql_insert: str = (
        "INSERT INTO {table} (id, state) VALUES (%(id)s, 'in_flight')"
        " ON DUPLICATE KEY UPDATE id = id"
    )
    mysql_complete: str = (
        "UPDATE {table} SET state = 'done', outcome = %(outcome)s WHERE id = %(id)s"
    )
    mysql_get: str = "SELECT state, outcome FROM {table} WHERE id = %(id)s"
    # SQLite: the store answers a claim that finds a done record with a plain read, so the
    # bare replay is the SELECT for both `replay` and `get`.
    sqlite_create: str = (
        "CREATE TABLE IF NOT EXISTS bare (id TEXT PRIMARY KEY, state TEXT, outcome BLOB)"
    )
    sqlite_insert: str = "INSERT INTO bare (id, state) VALUES (?, 'in_flight')"
    sqlite_complete: str = "UPDATE bare SET state = 'done', outcome = ? WHERE id = ?"
    sqlite_get: str = "SELECT state, outcome FROM bare WHERE id = ?"


WORKLOAD = Workload()


class Face(Protocol):
    """One face of the stores under test: measures one operation of one variant."""

    def measure(
        self, variant: str, operation: str, keys: list[str], workers: int
    ) -> tuple[float, float]:
        """Run `operation` over `keys`; return (operations per second, CPU seconds per op)."""
        ...


@dataclass
class Ops:
    """The three operations of a variant, sync: first-time, replay (claim), get."""

    first: Callable[[str], None]
    replay: Callable[[str], None]
    get: Callable[[str], None]
    close: Callable[[], None]


def bare_memory(w: Workload) -> Ops:
    """A dict under a lock: the floor for the memory store."""
    data: dict[str, tuple[str, bytes | None]] = {}
    lock = threading.Lock()

    def first(key: str) -> None:
        with lock:
            data.setdefault(key, ("in_flight", None))
        with lock:
            data[key] = ("done", w.outcome)

    def replay(key: str) -> None:
        with lock:
            data.setdefault(key, ("in_flight", None))

    def get(key: str) -> None:
        with lock:
            data.get(key)

    return Ops(first, replay, get, lambda: None)


def bare_sqlite(w: Workload, path: Path) -> Ops:
    """sqlite3 with a connection per thread, WAL: INSERT then UPDATE, and SELECT."""
    conn, close = _stores_async.sqlite_connector(path, w.sqlite_create)

    def first(key: str) -> None:
        c = conn()
        c.execute(w.sqlite_insert, (key,))
        c.execute(w.sqlite_complete, (w.outcome, key))

    def replay(key: str) -> None:
        conn().execute(w.sqlite_get, (key,)).fetchone()

    return Ops(first, replay, replay, close)


def bare_postgres(w: Workload, table: str) -> Ops:
    """psycopg with a pool in autocommit: INSERT ... ON CONFLICT then UPDATE; claim; SELECT."""
    pool = ConnectionPool(
        w.postgres_url, min_size=1, max_size=16, open=True, kwargs={"autocommit": True}
    )
    insert, complete, claim, read = (
        s.format(table=table)
        for s in (w.postgres_insert, w.postgres_complete, w.postgres_claim, w.postgres_get)
    )
    with pool.connection() as c:
        c.execute(w.postgres_create.format(table=table))

    def first(key: str) -> None:
        with pool.connection() as c:
            c.execute(insert, {"id": key})
        with pool.connection() as c:
            c.execute(complete, {"id": key, "outcome": w.outcome})

    def replay(key: str) -> None:
        with pool.connection() as c:
            c.execute(claim, {"id": key}).fetchone()

    def get(key: str) -> None:
        with pool.connection() as c:
            c.execute(read, {"id": key}).fetchone()

    return Ops(first, replay, get, pool.close)


def bare_mysql(w: Workload, table: str) -> Ops:
    """PyMySQL in autocommit, a small pool: INSERT ... ON DUPLICATE KEY UPDATE then UPDATE;
    that INSERT and a SELECT as one query (the claim that finds the row); SELECT."""
    connection, close = _stores_async.mysql_connector(w.mysql_url)
    insert, complete, read = (
        s.format(table=table) for s in (w.mysql_insert, w.mysql_complete, w.mysql_get)
    )
    claim = f"{insert}; {read}"
    with connection() as c, c.cursor() as cursor:
        cursor.execute(w.mysql_create.format(table=table))

    def first(key: str) -> None:
        with connection() as c, c.cursor() as cursor:
            cursor.execute(insert, {"id": key})
        with connection() as c, c.cursor() as cursor:
            cursor.execute(complete, {"id": key, "outcome": w.outcome})

    def replay(key: str) -> None:
        with connection() as c, c.cursor() as cursor:
            cursor.execute(claim, {"id": key})
            cursor.nextset()
            cursor.fetchone()

    def get(key: str) -> None:
        with connection() as c, c.cursor() as cursor:
            cursor.execute(read, {"id": key})
            cursor.fetchone()

    return Ops(first, replay, get, close)


def bare_redis(w: Workload, prefix: str) -> Ops:
    """redis-py: SET NX then SET; SET NX GET (a claim that finds the value); GET."""
    client = redis.Redis.from_url(w.redis_url)
    px = int(w.retention * 1000)

    def first(key: str) -> None:
        client.set(f"{prefix}:{key}", b"in_flight", nx=True, px=px)
        client.set(f"{prefix}:{key}", w.outcome, px=px)

    def replay(key: str) -> None:
        client.set(f"{prefix}:{key}", b"in_flight", nx=True, px=px, get=True)

    def get(key: str) -> None:
        client.get(f"{prefix}:{key}")

    return Ops(first, replay, get, client.close)


def store_ops(w: Workload, store: Store) -> Ops:
    """The same operations through a retrysafe store."""

    def first(key: str) -> None:
        identity = Identity("bench", "scope", key)
        claim = store.claim(identity, "fp", lease=w.lease, retention=w.retention)
        store.complete(identity, claim.token, w.outcome, retention=w.retention)

    def replay(key: str) -> None:
        claim = store.claim(
            Identity("bench", "scope", key), "fp", lease=w.lease, retention=w.retention
        )
        if claim.acquired:
            raise RuntimeError(f"a replay of {key!r} claimed the key: it found no outcome")

    def get(key: str) -> None:
        store.get(Identity("bench", "scope", key))

    return Ops(first, replay, get, store.close)


def store_urls(backend: str, workdir: Path, name: str, replay_cache: int) -> dict[str, str]:
    """Return the URL of each retrysafe variant of `backend`, their tables named after `name`."""

    def url(suffix: str) -> str:
        if backend == "memory":
            return "memory://"
        if backend == "sqlite":
            return f"sqlite:///{workdir / f'{name}{suffix}.db'}"
        if backend == "postgres":
            return f"{POSTGRES_URL}?table={name}{suffix}&pool_max=16"
        if backend == "mysql":
            return f"{MYSQL_URL}?table={name}{suffix}&pool_max=16"
        if backend == "redis":
            return f"{REDIS_URL}?prefix={name}{suffix}"
        raise SystemExit(f"unknown backend {backend!r}")

    urls = {"retrysafe": url("_rs")}
    if replay_cache:
        # A TTL longer than a round, so a round's replays find what its first-time calls kept.
        cached = url("_rc")
        separator = "&" if "?" in cached else "?"
        urls[CACHED] = f"{cached}{separator}replay_cache={replay_cache}&replay_cache_ttl=60"
    return urls


def drop(backend: str, name: str) -> None:
    """Drop the PostgreSQL and MySQL tables and Redis keys named after `name` (SQLite's go with
    workdir)."""
    if backend == "postgres":
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for table in (name, f"{name}_rs", f"{name}_rc"):
                conn.execute(f"DROP TABLE IF EXISTS {table}")
    elif backend == "mysql":
        connection, close = _stores_async.mysql_connector(MYSQL_URL)
        with connection() as conn, conn.cursor() as cursor:
            for table in (name, f"{name}_rs", f"{name}_rc"):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        close()
    elif backend == "redis":
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{name}*", count=1000):
            client.delete(key)
        client.close()


class SyncFace:
    """The sync face: `open_store`, driven by one thread or a pool of threads."""

    def __init__(self, variants: dict[str, Ops]) -> None:
        self.variants = variants

    def measure(
        self, variant: str, operation: str, keys: list[str], workers: int
    ) -> tuple[float, float]:
        """Run `operation` of `variant` over `keys` with `workers` threads."""
        call: Callable[[str], None] = getattr(self.variants[variant], operation)
        start, cpu = time.perf_counter(), time.process_time()
        if workers == 1:
            for key in keys:
                call(key)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(call, keys))
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        return len(keys) / elapsed, cpu / len(keys)


@contextmanager
def sync_face(backend: str, workdir: Path, name: str, urls: dict[str, str]) -> Iterator[Face]:
    """Yield the sync face of `backend`: the bare driver and each retrysafe variant."""
    w = WORKLOAD
    if backend == "memory":
        bare = bare_memory(w)
    elif backend == "sqlite":
        bare = bare_sqlite(w, workdir / f"{name}.db")
    elif backend == "postgres":
        bare = bare_postgres(w, name)
    elif backend == "mysql":
        bare = bare_mysql(w, name)
    else:
        bare = bare_redis(w, name)
    variants = {"bare": bare}
    try:
        for variant, url in urls.items():
            variants[variant] = store_ops(w, retrysafe.open_store(url))
        yield SyncFace(variants)
    finally:
        for ops in variants.values():
            ops.close()


Medians = dict[tuple[str, int, str], tuple[float, float]]


def run(face: Face, variants: list[str], ops: int, rounds: int) -> Medians:
    """Return the median (ops/s, CPU s/op) of each (operation, workers, variant) of `face`.

    The variants take turns, each round starting with the next one; each (round, workers,
    variant) claims its own keys, which its replays and reads then find.
    """
    samples: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    for round_index in range(rounds):
        for workers in WORKERS:
            shift = round_index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                keys = [f"{variant}-{round_index}-{workers}-{i}" for i in range(ops)]
                for operation in OPERATIONS:
                    sample = face.measure(variant, operation, keys, workers)
                    samples.setdefault((operation, workers, variant), []).append(sample)
    return {
        key: (statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs))
        for key, runs in samples.items()
    }


def header(variants: list[str]) -> str:
    """Return the Markdown table's header for `variants` (bare first).

    Three cells name a row and the last is retrysafe's time against the bare driver's, the
    layout `before_after.py` reads by default.
    """
    columns = (
        ["store", "operation", "face: workers"]
        + [f"{v} ops/s" for v in variants]
        + [f"{v} CPU µs/op" for v in variants]
        + [f"{v} time vs bare" for v in variants[2:]]
        + ["time vs bare"]
    )
    aligns = ["---"] * 3 + ["---:"] * (len(columns) - 3)
    return f"| {' | '.join(columns)} |\n|{'|'.join(aligns)}|"


def rows(backend: str, face: str, variants: list[str], medians: Medians) -> Iterator[str]:
    """Yield the table's rows for one face of one backend."""
    unit = "thread" if face == "sync" else "task"
    for operation, label in OPERATIONS.items():
        for workers in WORKERS:
            rate = {v: medians[(operation, workers, v)][0] for v in variants}
            cpu = {v: medians[(operation, workers, v)][1] for v in variants}
            cells = (
                [backend, label, f"{face}: {workers} {unit}{'s' * (workers > 1)}"]
                + [f"{rate[v]:,.0f}" for v in variants]
                + [f"{cpu[v] * 1e6:,.1f}" for v in variants]
                + [f"{rate['bare'] / rate[v]:.2f}x" for v in variants[2:] + variants[1:2]]
            )
            yield f"| {' | '.join(cells)} |"


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--backends", default="memory,sqlite,postgres,mysql,redis")
    parser.add_argument("--face", choices=("sync", "async", "both"), default="both")
    parser.add_argument(
        "--replay-cache", type=int, default=10000, help="replay_cache=N variant (0: none)"
    )
    args = parser.parse_args()
    faces = ["sync", "async"] if args.face == "both" else [args.face]
    variants = ["bare", "retrysafe"] + ([CACHED] if args.replay_cache else [])
    print(header(variants), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for face in faces:
                name = f"bench_{secrets.token_hex(4)}"
                urls = store_urls(backend, Path(tmp), name, args.replay_cache)
                opened: AbstractContextManager[Face] = (
                    sync_face(backend, Path(tmp), name, urls)
                    if face == "sync"
                    else _stores_async.async_face(backend, Path(tmp), name, urls, WORKLOAD)
                )
                try:
                    with opened as measured:
                        medians = run(measured, variants, args.ops, args.rounds)
                finally:
                    drop(backend, name)
                for row in rows(backend, face, variants, medians):
                    print(row, flush=True)


if __name__ == "__main__":
    main()
