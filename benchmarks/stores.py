"""Store throughput: retrysafe's claim + complete and replay against the bare driver.

    .venv/bin/python benchmarks/stores.py [--ops 2000] [--rounds 3] [--backends memory,sqlite,...]

For each store, in one run: claim + complete (a first-time request) and get (a replay), with one
worker and with 16 concurrent threads, side by side with the bare driver doing the same round
trips (SQLite INSERT + UPDATE; PostgreSQL INSERT ... ON CONFLICT + UPDATE; Redis SET NX + SET;
memory: a dict under a lock). Variants alternate within each round and rounds repeat, since the
machine is noisy; the median of the rounds is reported. Uses PostgreSQL and Redis at the URLs in
RETRYSAFE_TEST_POSTGRES_URL / RETRYSAFE_TEST_REDIS_URL (default: loopback).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
from psycopg_pool import ConnectionPool

import retrysafe
from retrysafe import Identity, Store

POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
OUTCOME = b'{"status":201,"body":"' + b"x" * 200 + b'"}'
LEASE, RETENTION = 30.0, 3600.0


@dataclass
class Bare:
    """The bare driver doing the same round trips as a store: first-time and replay."""

    first: Callable[[str], None]
    replay: Callable[[str], None]
    close: Callable[[], None]


def bare_memory() -> Bare:
    """A dict under a lock: the floor for the memory store."""
    data: dict[str, tuple[str, bytes | None]] = {}
    lock = threading.Lock()

    def first(key: str) -> None:
        with lock:
            data.setdefault(key, ("in_flight", None))
        with lock:
            data[key] = ("done", OUTCOME)

    def replay(key: str) -> None:
        with lock:
            data.get(key)

    return Bare(first, replay, lambda: None)


def bare_sqlite(path: Path) -> Bare:
    """sqlite3 with a connection per thread, WAL: INSERT then UPDATE, and SELECT."""
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

    conn().execute("CREATE TABLE bare (id TEXT PRIMARY KEY, state TEXT, outcome BLOB)")

    def first(key: str) -> None:
        c = conn()
        c.execute("INSERT INTO bare (id, state) VALUES (?, 'in_flight')", (key,))
        c.execute("UPDATE bare SET state = 'done', outcome = ? WHERE id = ?", (OUTCOME, key))

    def replay(key: str) -> None:
        conn().execute("SELECT state, outcome FROM bare WHERE id = ?", (key,)).fetchone()

    return Bare(first, replay, lambda: [c.close() for c in connections] and None)


def bare_postgres(table: str) -> Bare:
    """psycopg with a pool: INSERT ... ON CONFLICT then UPDATE, and SELECT."""
    pool = ConnectionPool(
        POSTGRES_URL, min_size=1, max_size=16, open=True, kwargs={"autocommit": True}
    )
    with pool.connection() as c:
        c.execute(f"CREATE TABLE {table} (id TEXT PRIMARY KEY, state TEXT, outcome BYTEA)")

    def first(key: str) -> None:
        with pool.connection() as c:
            c.execute(
                f"INSERT INTO {table} (id, state) VALUES (%s, 'in_flight') "
                "ON CONFLICT (id) DO NOTHING",
                (key,),
            )
        with pool.connection() as c:
            c.execute(
                f"UPDATE {table} SET state = 'done', outcome = %s WHERE id = %s", (OUTCOME, key)
            )

    def replay(key: str) -> None:
        with pool.connection() as c:
            c.execute(f"SELECT state, outcome FROM {table} WHERE id = %s", (key,)).fetchone()

    def close() -> None:
        with pool.connection() as c:
            c.execute(f"DROP TABLE {table}")
        pool.close()

    return Bare(first, replay, close)


def bare_redis(prefix: str) -> Bare:
    """redis-py: SET NX then SET, and GET."""
    client = redis.Redis.from_url(REDIS_URL)

    def first(key: str) -> None:
        client.set(f"{prefix}:{key}", b"in_flight", nx=True, px=3_600_000)
        client.set(f"{prefix}:{key}", OUTCOME, px=3_600_000)

    def replay(key: str) -> None:
        client.get(f"{prefix}:{key}")

    def close() -> None:
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()

    return Bare(first, replay, close)


def store_ops(store: Store) -> Bare:
    """The same two operations through a retrysafe store."""

    def first(key: str) -> None:
        identity = Identity("bench", "scope", key)
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        store.complete(identity, claim.token, OUTCOME, retention=RETENTION)

    def replay(key: str) -> None:
        store.get(Identity("bench", "scope", key))

    return Bare(first, replay, store.close)


@contextmanager
def variants(backend: str, workdir: Path) -> Iterator[dict[str, Bare]]:
    """Yield the bare driver and the retrysafe store for `backend`, cleaned up afterwards."""
    name = f"bench_{secrets.token_hex(4)}"
    if backend == "memory":
        pair = {"bare": bare_memory(), "retrysafe": store_ops(retrysafe.open_store("memory://"))}
    elif backend == "sqlite":
        pair = {
            "bare": bare_sqlite(workdir / "bare.db"),
            "retrysafe": store_ops(retrysafe.open_store(f"sqlite:///{workdir / 'store.db'}")),
        }
    elif backend == "postgres":
        pair = {
            "bare": bare_postgres(name),
            "retrysafe": store_ops(
                retrysafe.open_store(f"{POSTGRES_URL}?table={name}_rs&pool_max=16")
            ),
        }
    elif backend == "redis":
        pair = {
            "bare": bare_redis(name),
            "retrysafe": store_ops(retrysafe.open_store(f"{REDIS_URL}?prefix={name}_rs")),
        }
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    try:
        yield pair
    finally:
        for ops in pair.values():
            ops.close()
        if backend == "postgres":
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {name}_rs")
        elif backend == "redis":
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{name}_rs:*", count=1000):
                client.delete(key)
            client.close()


def measure(operation: Callable[[str], None], keys: list[str], workers: int) -> float:
    """Return operations per second of `operation` over `keys` with `workers` threads."""
    start = time.perf_counter()
    if workers == 1:
        for key in keys:
            operation(key)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(operation, keys))
    return len(keys) / (time.perf_counter() - start)


def run(
    backend: str, ops: int, rounds: int, workdir: Path
) -> list[tuple[str, str, int, float, float]]:
    """Return rows (backend, phase, workers, bare ops/s, retrysafe ops/s) for one backend."""
    results: dict[tuple[str, int, str], list[float]] = {}
    with variants(backend, workdir) as pair:
        for round_index in range(rounds):
            for workers in (1, 16):
                order = ["bare", "retrysafe"] if round_index % 2 == 0 else ["retrysafe", "bare"]
                for variant in order:
                    keys = [f"{variant}-{round_index}-{workers}-{i}" for i in range(ops)]
                    first = measure(pair[variant].first, keys, workers)
                    replay = measure(pair[variant].replay, keys, workers)
                    results.setdefault(("claim+complete", workers, variant), []).append(first)
                    results.setdefault(("replay (get)", workers, variant), []).append(replay)
    rows = []
    for phase in ("claim+complete", "replay (get)"):
        for workers in (1, 16):
            bare = statistics.median(results[(phase, workers, "bare")])
            ours = statistics.median(results[(phase, workers, "retrysafe")])
            rows.append((backend, phase, workers, bare, ours))
    return rows


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis")
    args = parser.parse_args()
    print("| store | operation | workers | bare driver ops/s | retrysafe ops/s | time vs bare |")
    print("|---|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            for name, phase, workers, bare, ours in run(backend, args.ops, args.rounds, Path(tmp)):
                print(
                    f"| {name} | {phase} | {workers} | {bare:,.0f} | {ours:,.0f} "
                    f"| {bare / ours:.2f}x |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
