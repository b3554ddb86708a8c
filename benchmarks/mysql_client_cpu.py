"""Where a MySQL claim + complete spends the client's CPU: the store against its own statements.

    .venv/bin/python benchmarks/mysql_client_cpu.py [--ops 1500] [--rounds 3]

One thread, one connection at a time, the variants taking turns, each round starting with the
next one:

- `store`: `open_store("mysql://...")`, claim then complete of a new key;
- `statements`: the very queries the store sent for another run of keys (captured from PyMySQL,
  its parameters already written in), sent again raw on one PyMySQL connection into an empty
  copy of the table: the driver's and the server's share, without the store's Python;
- `one column`: the same, the two reads asking for `token` alone instead of the record's
  columns (what PyMySQL's parsing of column metadata costs);
- `no transaction`: the same, without the `START TRANSACTION` and `COMMIT` around each pair of
  statements (their two result packets); since the store's claim and completion go without a
  transaction (docs/stores.md), this is the `statements` variant again, a check of the scatter;
- `bare`: benchmarks/stores.py's bare driver, `INSERT ... ON DUPLICATE KEY UPDATE` then
  `UPDATE` on a three-column table.

The last three change what the store does and are not correct claims: they only price a piece.
Each figure is the median over the rounds of the process's CPU time per claim + complete
(`time.process_time`) and of wall time. Uses RETRYSAFE_TEST_MYSQL_URL (default: loopback).
"""

from __future__ import annotations

import argparse
import functools
import re
import secrets
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import _stores_async
import pymysql  # type: ignore[import-untyped]
import pymysql.cursors  # type: ignore[import-untyped]
from stores import MYSQL_URL, WORKLOAD

import retrysafe
from retrysafe import Identity, Store

# The record's columns in the store's two reads (the claim's, and the completion's lean one).
_RECORD_COLUMNS = re.compile(
    r"SELECT namespace, scope, `key`, fingerprint, state, token, created_at, lease_expires_at,"
    r" expires_at, (?:outcome|NULL), recovery_point(?:, taken_over)? FROM"
)


def store_pairs(store: Store, prefix: str, ops: int) -> None:
    """Claim and complete `ops` new keys through the store."""
    for i in range(ops):
        identity = Identity("bench", "scope", f"{prefix}-{i}")
        claim = store.claim(identity, "fp", lease=WORKLOAD.lease, retention=WORKLOAD.retention)
        store.complete(identity, claim.token, WORKLOAD.outcome, retention=WORKLOAD.retention)


@contextmanager
def captured_queries() -> Iterator[list[str]]:
    """Collect the text of every query PyMySQL sends meanwhile, parameters written in."""
    queries: list[str] = []
    execute = pymysql.cursors.Cursor.execute

    def spy(self: Any, query: str, args: Any = None) -> Any:
        queries.append(query if args is None else self.mogrify(query, args))
        return execute(self, query, args)

    pymysql.cursors.Cursor.execute = spy
    try:
        yield queries
    finally:
        pymysql.cursors.Cursor.execute = execute


def send(cursor: Any, queries: list[str], rewrite: Callable[[str], str]) -> None:
    """Send each query, rewritten, and read every result set, as the store does."""
    for query in queries:
        cursor.execute(rewrite(query))
        cursor.fetchall()
        while cursor.nextset():
            cursor.fetchall()


def timed(work: Callable[[], None], ops: int) -> tuple[float, float]:
    """Run `work`; return (CPU µs, wall µs) per claim + complete."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return cpu / ops * 1e6, wall / ops * 1e6


def main() -> None:
    """Run the variants and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=1500, help="claim + complete pairs a round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    args = parser.parse_args()
    name = f"bench_{secrets.token_hex(4)}"
    store = retrysafe.open_store(f"{MYSQL_URL}?table={name}")
    connection, close = _stores_async.mysql_connector(MYSQL_URL)
    bare = f"{name}_bare"
    insert, complete = (
        s.format(table=bare) for s in (WORKLOAD.mysql_insert, WORKLOAD.mysql_complete)
    )
    try:
        store_pairs(store, "warm", args.ops)  # the table made, the pool warm
        with captured_queries() as queries:
            store_pairs(store, "captured", args.ops)
        with connection() as conn, conn.cursor() as cursor:
            cursor.execute(WORKLOAD.mysql_create.format(table=bare))
            copy = f"{name}_copy"

            def statements(rewrite: Callable[[str], str]) -> Callable[[], None]:
                def run() -> None:
                    cursor.execute(f"CREATE TABLE {copy} LIKE {name}")
                    try:
                        send(
                            cursor, queries, lambda q: rewrite(q.replace(f"`{name}`", f"`{copy}`"))
                        )
                    finally:
                        cursor.execute(f"DROP TABLE {copy}")

                return run

            def bare_pairs(prefix: str) -> Callable[[], None]:
                def run() -> None:
                    for i in range(args.ops):
                        cursor.execute(insert, {"id": f"{prefix}-{i}"})
                        cursor.execute(
                            complete, {"id": f"{prefix}-{i}", "outcome": WORKLOAD.outcome}
                        )

                return run

            samples: dict[str, list[tuple[float, float]]] = {}
            for round_index in range(args.rounds):
                variants: dict[str, Callable[[], None]] = {
                    "store": functools.partial(
                        store_pairs, store, f"store-{round_index}", args.ops
                    ),
                    "statements": statements(lambda q: q),
                    "one column": statements(lambda q: _RECORD_COLUMNS.sub("SELECT token FROM", q)),
                    "no transaction": statements(
                        lambda q: q.replace("START TRANSACTION;\n", "").replace(";\nCOMMIT", "")
                    ),
                    "bare": bare_pairs(f"bare-{round_index}"),
                }
                order = list(variants)
                shift = round_index % len(order)  # each round starts with the next variant
                for variant in order[shift:] + order[:shift]:
                    samples.setdefault(variant, []).append(timed(variants[variant], args.ops))
    finally:
        with connection() as conn, conn.cursor() as cursor:
            for table in (name, bare, f"{name}_copy"):
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
        close()
        store.close()
    print("| variant | CPU µs per claim+complete | wall µs per claim+complete |")
    print("|---|---:|---:|")
    for variant in ("store", "statements", "one column", "no transaction", "bare"):
        runs = samples[variant]
        cpu = statistics.median(run[0] for run in runs)
        wall = statistics.median(run[1] for run in runs)
        print(f"| {variant} | {cpu:,.0f} | {wall:,.0f} |")


if __name__ == "__main__":
    main()
