"""A worker process for the crash tests: one payment, or one phased order, then exit.

    python -m tests.transactions.worker --mode tx --db sqlite --dsn PATH --table T ...

`--db` is sqlite (a file), postgres (psycopg) or mysql (PyMySQL, on a `mysql://` DSN).

At each named point it checks `--crash-at`: when they match, it prints `at:POINT {state}` and
blocks on stdin until the test kills it with SIGKILL. Otherwise it finishes and prints
`outcome:{json}`. The test reads stdout, kills at the point, and checks the database.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sqlite3
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from retrysafe import Identity, transactions
from retrysafe.transactions import Step, insert_if_absent, run_phases, update_by_key

__all__ = ["main"]

TX_POINTS = ("before_write", "after_write", "after_commit")
PHASE_POINTS = (
    "reserve:end",
    "charge:start",
    "charge:after_call",
    "finish:start",
    "finish:end",
    "after_commit",
)


class OffsetClock:
    """The system clock moved forward, as if the retry came `offset` seconds later."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def now(self) -> float:
        """Return the shifted time."""
        return time.time() + self.offset


class Worker:
    """One run of the worker, from its command line."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.identity = Identity("orders", "tenant-a", args.key)
        self.clock = OffsetClock(args.clock_offset)
        if args.db == "sqlite":
            self.conn: Any = sqlite3.connect(args.dsn, timeout=30)
            self.mark = "?"
        elif args.db == "mysql":
            import pymysql

            parts = urlsplit(args.dsn)
            self.conn = pymysql.connect(
                host=parts.hostname,
                port=parts.port or 3306,
                user=parts.username,
                password=parts.password or "",
                database=parts.path.lstrip("/"),
                charset="utf8mb4",
            )
            self.mark = "%s"
        else:
            import psycopg

            self.conn = psycopg.connect(args.dsn)
            self.mark = "%s"

    def execute(self, statement: str, params: tuple[object, ...]) -> None:
        """Run one statement on the worker's connection (PyMySQL has no `conn.execute`)."""
        self.conn.cursor().execute(statement, params)

    def reach(self, point: str, **state: object) -> None:
        """Stop here for the kill if this is the crash point."""
        if point == self.args.crash_at:
            print(f"at:{point} {json.dumps(state)}", flush=True)
            sys.stdin.readline()  # the test kills this process while it waits
            sys.exit(3)  # stdin closed: the test is gone

    def payment(self) -> dict[str, object]:
        """Insert one payment in transactional mode, or replay it."""
        openers = {"sqlite": transactions.sqlite, "mysql": transactions.mysql}
        opener = openers.get(self.args.db, transactions.psycopg)
        insert = f"INSERT INTO {self.args.payments} VALUES ({self.mark}, {self.mark}, 100)"  # noqa: S608 - a test table
        with opener(
            self.conn,
            identity=self.identity,
            fingerprint="amount=100",
            table=self.args.table,
            clock=self.clock,
        ) as tx:
            if not tx.replay:
                self.reach("before_write")
                payment_id = secrets.token_hex(6)
                self.execute(insert, (payment_id, self.args.key))
                tx.complete(json.dumps({"id": payment_id}).encode())
                self.reach("after_write")
        result = {"replay": tx.replay, "outcome": (tx.outcome or b"").decode()}
        self.reach("after_commit", **result)
        return result

    def order(self) -> dict[str, object]:
        """Run the phased order: reserve, charge through the provider, finish."""
        import httpx

        orders, key = self.args.orders, self.args.key

        # A plain insert, on purpose: a phase whose writes committed twice shows twice.
        log_insert = f"INSERT INTO {self.args.log} VALUES ({self.mark}, {self.mark}, {self.mark})"  # noqa: S608 - a test table

        def log(step: Step) -> None:
            self.execute(log_insert, (secrets.token_hex(6), key, step.name))

        def reserve(step: Step) -> None:
            insert_if_absent(self.conn, orders, {"key": key, "status": "reserved"}, unique=["key"])
            log(step)
            self.reach("reserve:end")

        def charge(step: Step) -> None:
            self.reach("charge:start")
            response = httpx.post(
                f"{self.args.provider}/charges",
                json={"amount": 100},
                headers={"Idempotency-Key": step.foreign_key()},
                timeout=10,
            )
            response.raise_for_status()
            self.reach("charge:after_call")
            charge_id = response.json()["id"]
            update_by_key(
                self.conn, orders, {"key": key}, {"charge": charge_id, "status": "charged"}
            )
            log(step)

        def finish(step: Step) -> bytes:
            self.reach("finish:start")
            row = update_by_key(self.conn, orders, {"key": key}, {"status": "paid"})
            assert row is not None
            log(step)
            self.reach("finish:end")
            return json.dumps({"order": key, "charge": row["charge"]}).encode()

        result = run_phases(
            self.conn,
            {"reserve": reserve, "charge": charge, "finish": finish},
            identity=self.identity,
            fingerprint="amount=100",
            table=self.args.table,
            clock=self.clock,
        )
        state = {
            "replay": result.replay,
            "outcome": result.outcome.decode(),
            "resumed_from": result.resumed_from,
            "ran": list(result.ran),
        }
        self.reach("after_commit", **state)
        return state


def main() -> None:
    """Parse the command line, run once, print the outcome."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["tx", "phases"], required=True)
    parser.add_argument("--db", choices=["sqlite", "postgres", "mysql"], required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--payments", default="")
    parser.add_argument("--orders", default="")
    parser.add_argument("--log", default="")
    parser.add_argument("--provider", default="")
    parser.add_argument("--crash-at", default="")
    parser.add_argument("--clock-offset", type=float, default=0.0)
    worker = Worker(parser.parse_args())
    result = worker.payment() if worker.args.mode == "tx" else worker.order()
    worker.conn.close()
    print(f"outcome:{json.dumps(result)}", flush=True)


if __name__ == "__main__":
    main()
