"""Sizing each store: bytes per record and operations per request, measured (docs/scaling.md).

    .venv/bin/python scripts/services.py -- .venv/bin/python benchmarks/scaleout_sizing.py \
        [--records 2000] [--notes 0,1000] [--json out.json]

One app instance of benchmarks/_scaleout_apps.py (retrysafe's middleware, its default
settings) runs on a PostgreSQL and a Redis that this script starts for itself (scripts/
services.py's throwaway servers, so no one else's traffic is counted in their statistics), and
on a SQLite file. The effects go to the test Redis (RETRYSAFE_TEST_REDIS_URL), never to the
store measured. For each store and each `--notes` size (bytes added to every response):

- first-time: `--records` new keys, one request at a time: the store primitives per request
  (the middleware's own count), the server's count (PostgreSQL: transactions, rows and WAL
  bytes from pg_stat_database / pg_current_wal_lsn; Redis: INFO commandstats and the reads it
  served), and the CPU per request of the app process and of the server (Redis: INFO cpu;
  PostgreSQL: every process of its server, from /proc); then the bytes per record
  (PostgreSQL: pg_total_relation_size / rows, as written and after VACUUM FULL; Redis: MEMORY
  USAGE per key and the INFO memory delta; SQLite: the file size after a checkpoint);
- replay: `--records` replays of those keys, one at a time (the first request of the phase
  is a first-time one: a replay needs a key);
- concurrent (note 0 only): 16 connections, 60% first-time, 30% replays, 10% duplicates,
  where auto-pipelining batches the statements of concurrent requests.
"""

from __future__ import annotations

import os
import sys

if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import json
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis

from benchmarks._scaleout_apps import EffectSink, Instances, instances
from benchmarks._scaleout_load import Mix, run_load
from benchmarks.http_middleware import cpu_seconds

# PostgreSQL 15 backends publish their statistics at most once a second, and an idle one
# within 10 s: wait that long before reading pg_stat_*.
_PG_STATS_SECONDS = 11.0
_SINK = "redis://127.0.0.1:6379/15"


def _one(row: Any) -> Any:
    """Return a query's row, which must be there."""
    if row is None:
        raise RuntimeError("the query found no row")
    return row


def _parent(pid: int) -> int:
    """Return the parent of process `pid` (Linux /proc)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _tree_cpu_seconds(root: int) -> float:
    """Return the CPU seconds of process `root` (a PostgreSQL postmaster), of its children that
    ended (cutime, cstime) and of those alive (Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(stat.parent.name) == root:
            ticks += sum(int(x) for x in fields[11:15])
        elif int(fields[1]) == root:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class PostgresProbe:
    """Statistics and sizes of one database on a server only this script uses."""

    def __init__(self, admin_url: str, database: str, table: str) -> None:
        self.admin_url, self.database, self.table = admin_url, database, table

    def snapshot(self) -> dict[str, float]:
        """Return the database's counters (after waiting for backends to publish them)."""
        time.sleep(_PG_STATS_SECONDS)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched,"
                " pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
                " FROM pg_stat_database WHERE datname = %s",
                (self.database,),
            ).fetchone()
            postmaster = _parent(_one(conn.execute("SELECT pg_backend_pid()").fetchone())[0])
        row = _one(row)
        names = ("transactions", "rows inserted", "rows updated", "rows deleted", "rows fetched")
        return {
            **dict(zip(names, map(float, row[:5]), strict=True)),
            "WAL bytes": float(row[5]),
            "server CPU seconds": _tree_cpu_seconds(postmaster),
        }

    def size(self) -> dict[str, float]:
        """Return bytes per record: as written (each completion left a dead row version until
        vacuum), then after VACUUM FULL (no dead versions)."""
        url = self.admin_url.rsplit("/", 1)[0] + f"/{self.database}"
        with psycopg.connect(url, autocommit=True) as conn:
            query = (
                "SELECT count(*), pg_total_relation_size(%(t)s), pg_relation_size(%(t)s),"
                " pg_indexes_size(%(t)s), avg(pg_column_size(r.*)), avg(length(outcome))"
                f' FROM "{self.table}" r'
            )
            found = conn.execute(query, {"t": self.table}).fetchone()  # type: ignore[arg-type]
            rows, total, heap, indexes, row_bytes, outcome = _one(found)
            conn.execute(f'VACUUM FULL "{self.table}"')  # type: ignore[arg-type]
            compact = _one(
                conn.execute("SELECT pg_total_relation_size(%s)", (self.table,)).fetchone()
            )
        return {
            "records": rows,
            "bytes per record, as written": total / rows,
            "heap": heap / rows,
            "indexes": indexes / rows,
            "bytes per record, after VACUUM FULL": compact[0] / rows,
            "row (pg_column_size)": float(row_bytes),
            "stored outcome": float(outcome),
        }


class RedisProbe:
    """Statistics and sizes on a Redis only this script uses."""

    def __init__(self, url: str, prefix: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def snapshot(self) -> dict[str, float]:
        """Return the server's command counts and memory."""
        counters: dict[str, float] = {}
        for name, values in self.client.info("commandstats").items():
            counters[f"{name.removeprefix('cmdstat_').upper()} calls"] = float(values["calls"])
        stats = self.client.info("stats")
        counters["commands"] = float(stats["total_commands_processed"])
        counters["reads (round trips)"] = float(stats["total_reads_processed"])
        counters["used_memory"] = float(self.client.info("memory")["used_memory"])
        cpu = self.client.info("cpu")
        counters["server CPU seconds"] = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return counters

    def size(self) -> dict[str, float]:
        """Return MEMORY USAGE per record key, and the stored string's length."""
        usage, length, keys = 0, 0, 0
        for key in self.client.scan_iter(match=f"{self.prefix}:{{*", count=1000):
            if key.endswith(b"}"):  # a record, not a waiters' channel
                usage += int(self.client.memory_usage(key, samples=0) or 0)
                length += int(self.client.strlen(key))
                keys += 1
        return {"records": keys, "MEMORY USAGE per key": usage / keys, "value bytes": length / keys}


class SqliteProbe:
    """The size of a SQLite file."""

    def __init__(self, path: Path, table: str) -> None:
        self.path, self.table = path, table

    def snapshot(self) -> dict[str, float]:
        """SQLite has no server: the store's primitives are its operations."""
        return {}

    def size(self) -> dict[str, float]:
        """Return the file's bytes per record after a checkpoint."""
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            rows = conn.execute(f'SELECT count(*) FROM "{self.table}"').fetchone()[0]
        return {"records": rows, "bytes per record (file)": self.path.stat().st_size / rows}


def phase(
    group: Instances,
    probe: Any,
    before: dict[str, float],
    *,
    name: str,
    requests: int,
    mix: Mix,
    connections: int,
) -> tuple[dict[str, Any], dict[str, float]]:
    """Run one load phase from the probe's snapshot `before`; return its operations per
    request, and the snapshot after it (the next phase's `before`)."""
    stats_before, app_cpu = group.stats()[0], cpu_seconds(group.pids[0])
    result = run_load(group.ports, run=name, requests=requests, mix=mix, connections=connections)
    app_cpu = cpu_seconds(group.pids[0]) - app_cpu
    after, stats_after = probe.snapshot(), group.stats()[0]
    if result.errors or result.violation_count:
        raise SystemExit(f"{name}: {dict(result.errors)} {result.violations}")
    per_request = {
        f"{key.removeprefix('store_')} (store call)": (stats_after[key] - stats_before.get(key, 0))
        / result.requests
        for key in stats_after
        if key.startswith("store_")
    }
    per_request["app CPU µs"] = app_cpu * 1e6 / result.requests
    for key, value in after.items():
        delta = value - before.get(key, 0.0)
        if key.endswith(" seconds"):
            per_request[key.replace(" seconds", " µs")] = delta * 1e6 / result.requests
        elif delta and key != "used_memory" and not key.startswith("INFO"):
            per_request[key] = delta / result.requests
    if "used_memory" in after:
        per_request["used_memory delta"] = (after["used_memory"] - before["used_memory"]) / (
            result.requests
        )
    figures = {"requests": result.requests, "p50 ms": result.percentile(0.5), **per_request}
    return figures, after


@contextlib.contextmanager
def store_makers(workdir: Path) -> Iterator[dict[str, Any]]:
    """Yield, per store, a function of a fresh name that returns (store URL, probe)."""
    # scripts/services.py imports its neighbours as top-level modules.
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "scripts"))
    from services import throwaway_postgres, throwaway_redis  # noqa: PLC0415

    # Each server gets a directory of its own: throwaway_postgres hands it to the postgres user.
    with (
        tempfile.TemporaryDirectory() as pg_dir,
        tempfile.TemporaryDirectory() as redis_dir,
        throwaway_postgres(Path(pg_dir)) as pg_url,
        throwaway_redis(Path(redis_dir)) as r_url,
    ):
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE sizing")
        database = pg_url.rsplit("/", 1)[0] + "/sizing"
        yield {
            "postgres": lambda name: (
                f"{database}?table={name}",
                PostgresProbe(pg_url, "sizing", name),
            ),
            "redis": lambda name: (f"{r_url}?prefix={name}", RedisProbe(r_url, name)),
            "sqlite": lambda name: (
                f"sqlite:///{workdir / name}.db?table={name}",
                SqliteProbe(workdir / f"{name}.db", name),
            ),
        }


def measure(url: str, probe: Any, *, name: str, note: int, records: int) -> dict[str, Any]:
    """Measure one store with responses `note` bytes longer than the app's own."""
    sink = EffectSink(os.environ.get("RETRYSAFE_TEST_REDIS_URL", _SINK), f"{name}_effects")
    figures: dict[str, Any] = {}
    try:
        with instances(url, sink, 1) as group:
            # Warm-up: the schema, the scope secret, the connections, prepared statements.
            run_load(group.ports, run=f"{name}-w", requests=50, mix=Mix(0, 0), connections=1)
            before = probe.snapshot()
            figures["first-time, one at a time"], before = phase(
                group, probe, before, name=f"{name}-f", requests=records,
                mix=Mix(0, 0, note_bytes=note), connections=1,
            )  # fmt: skip
            figures["size"] = probe.size()
            before = probe.snapshot()  # what measuring the size did is no replay's
            figures["replay, one at a time"], before = phase(
                group, probe, before, name=f"{name}-r", requests=records,
                mix=Mix(1.0, 0, note_bytes=note), connections=1,
            )  # fmt: skip
            if note == 0:
                figures["mix, 16 connections"], before = phase(
                    group, probe, before, name=f"{name}-c", requests=records,
                    mix=Mix(0.3, 0.1), connections=16,
                )  # fmt: skip
    finally:
        sink.drop()
    return figures


def main() -> None:
    """Measure and print every store's sizing figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--notes", default="0,1000", help="bytes added to each response")
    parser.add_argument("--stores", default="postgres,redis,sqlite")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, store_makers(Path(tmp)) as makers:
        for label in args.stores.split(","):
            for note in (int(n) for n in args.notes.split(",")):
                name = f"sizing_{secrets.token_hex(3)}_{note}"
                url, probe = makers[label](name)
                figures = measure(url, probe, name=name, note=note, records=args.records)
                results[f"{label}, note {note}"] = figures
                print(f"\n## {label}, responses +{note} bytes\n", flush=True)
                for section, values in figures.items():
                    shown = ", ".join(f"{k} {v:,.3g}" for k, v in values.items())
                    print(f"- {section}: {shown}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
