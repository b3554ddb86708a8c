"""A worker process for the completer's crash tests: one order through the registry, then exit.

    python -m tests.completer.worker --db sqlite --dsn PATH --table T --key K --request JSON

It runs like `tests/transactions/worker.py`: at the `--crash-at` point it prints `at:POINT {}`
and blocks on stdin until the test kills it with SIGKILL; otherwise it prints `outcome:{json}`.
Its clock runs `--clock-offset` seconds off, so a negative offset leaves a lease that has
already expired when it is killed: the completer can take it over without anyone waiting.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Any

from retrysafe import Identity
from tests.completer import orders
from tests.transactions.worker import OffsetClock

__all__ = ["main"]


def main() -> None:
    """Parse the command line, run the order once, print the outcome."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", choices=["sqlite", "postgres"], required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--request", required=True)
    parser.add_argument("--crash-at", default="")
    parser.add_argument("--clock-offset", type=float, default=0.0)
    args = parser.parse_args()

    def reach(point: str, key: str) -> None:
        if point == args.crash_at:
            print(f"at:{point} {{}}", flush=True)
            sys.stdin.readline()  # the test kills this process while it waits
            sys.exit(3)  # stdin closed: the test is gone

    orders.reach = reach
    if args.db == "sqlite":
        conn: Any = sqlite3.connect(args.dsn, timeout=30)
    else:
        import psycopg

        conn = psycopg.connect(args.dsn)
    result = orders.registry.run(
        conn,
        Identity("orders", "tenant-a", args.key),
        args.request.encode(),
        table=args.table,
        clock=OffsetClock(args.clock_offset),
    )
    conn.close()
    reach("after_commit", args.key)
    state = {"replay": result.replay, "outcome": result.outcome.decode()}
    print(f"outcome:{json.dumps(state)}", flush=True)


if __name__ == "__main__":
    main()
