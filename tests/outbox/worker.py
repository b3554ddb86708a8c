"""A worker process for the outbox crash tests: one order with its messages, or one relay run.

    python -m tests.outbox.worker app --db sqlite --dsn PATH --table T --key K --topic Q ...
    python -m tests.outbox.worker relay --db sqlite --dsn PATH --table T --amqp URL ...

At each named point it checks `--crash-at`: when they match, it prints `at:POINT` and blocks on
stdin until the test kills it with SIGKILL. Otherwise it finishes and prints `outcome:{json}`.

Points: `app` has `before_commit` (the messages are added, the block has not ended) and
`after_commit` (committed, nothing published); `relay` has `published:N` (the broker confirmed
the N-th message of this run, which is not marked published yet).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from typing import Any

from retrysafe import Identity, transactions
from retrysafe.outbox import AmqpPublisher, OutboxMessage, Relay

__all__ = ["main"]


def point(name: str, crash_at: str) -> None:
    """Report `name` and wait to be killed, if it is the crash point."""
    if name == crash_at:
        print(f"at:{name}", flush=True)
        sys.stdin.read()  # the test kills us here
        raise SystemExit(3)  # pragma: no cover - stdin closed without a kill


def connect(args: argparse.Namespace) -> Any:
    """Open the driver connection the app writes with."""
    if args.db == "sqlite":
        return sqlite3.connect(args.dsn, timeout=30)
    import psycopg

    return psycopg.connect(args.dsn)


def app(args: argparse.Namespace) -> dict[str, Any]:
    """Record one order and add its two messages in one transaction."""
    mark = "?" if args.db == "sqlite" else "%s"
    opener = transactions.sqlite if args.db == "sqlite" else transactions.psycopg
    identity = Identity("orders", "tenant-a", args.key)
    with contextlib.closing(connect(args)) as conn:
        with opener(conn, identity=identity, fingerprint="f", table=args.table) as tx:
            if tx.replay:
                return {"replay": True, "ids": []}
            conn.execute(f"INSERT INTO {args.orders} VALUES ({mark})", (args.key,))  # noqa: S608
            ids = [
                tx.outbox.add(args.topic, json.dumps({"order": args.key, "n": n}).encode())
                for n in range(2)
            ]
            if args.fail:
                raise SystemExit(json.dumps({"failed": True}))
            point("before_commit", args.crash_at)
            tx.complete(json.dumps(ids).encode())
        point("after_commit", args.crash_at)
    return {"replay": False, "ids": ids}


def relay(args: argparse.Namespace) -> dict[str, Any]:
    """Publish what is waiting to RabbitMQ; count what this run published."""
    amqp = AmqpPublisher(args.amqp)
    count = 0

    def publish(message: OutboxMessage) -> None:
        nonlocal count
        amqp(message)  # returns once the broker confirmed it
        count += 1
        point(f"published:{count}", args.crash_at)

    store = f"sqlite:///{args.dsn}" if args.db == "sqlite" else args.dsn
    with Relay(f"{store}?table={args.table}", publish, batch=args.batch) as runner:
        while runner.run_once():
            pass
    amqp.close()
    return {"published": count}


def main() -> None:
    """Run the worker from its command line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("app", "relay"))
    parser.add_argument("--db", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--orders", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--topic", default="")
    parser.add_argument("--amqp", default="")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--fail", action="store_true")
    parser.add_argument("--crash-at", default="")
    args = parser.parse_args()
    result = app(args) if args.mode == "app" else relay(args)
    print("outcome:" + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
