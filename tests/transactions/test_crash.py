"""Crash tests: worker processes killed with SIGKILL at every point, then retried.

Each run is a fresh `python -m tests.transactions.worker` process. The test kills it with
SIGKILL when it reports that it reached the chosen point, checks what the database holds, and
starts the next retry. Across every kill and retry the effect happens exactly once and every
answer that reaches the client is the one outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, Record, State
from retrysafe.transactions import foreign_key
from tests.transactions.conftest import Database
from tests.transactions.provider import PaymentProvider

ROOT = Path(__file__).resolve().parents[2]
KEY = "order-1"
IDENTITY = Identity("orders", "tenant-a", KEY)
WORKER_SECONDS = 60.0


@dataclass(frozen=True)
class Run:
    """One worker run: the point it was killed at (None if it finished) and its state."""

    killed_at: str | None
    state: dict[str, Any]


def run_worker(args: list[str], crash_at: str | None) -> Run:
    """Run the worker once; SIGKILL it as soon as it reports `crash_at`."""
    command = [sys.executable, "-m", "tests.transactions.worker", *args]
    command += ["--crash-at", crash_at or ""]
    with subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        watchdog = threading.Timer(WORKER_SECONDS, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            assert process.stderr is not None
            for line in process.stdout:
                if line.startswith("at:"):
                    point, _, state = line[3:].strip().partition(" ")
                    os.kill(process.pid, signal.SIGKILL)
                    assert process.wait(10) == -signal.SIGKILL
                    return Run(point, json.loads(state))
                if line.startswith("outcome:"):
                    assert process.wait(10) == 0
                    return Run(None, json.loads(line.removeprefix("outcome:")))
            process.wait(10)
            raise AssertionError(f"the worker ended without a result:\n{process.stderr.read()}")
        finally:
            watchdog.cancel()


def record_of(database: Database) -> Record | None:
    """Return the order's record as the store sees it."""
    store = database.store()
    try:
        return store.get(IDENTITY)
    finally:
        store.close()


# The points, in the order the retries hit them. Once the effect has committed, later runs
# are replays: they never reach the points inside the transaction, only "after_commit".
TX_RETRIES = [
    "before_write",
    "after_write",
    "before_write",
    "after_write",
    "after_commit",
    None,
    "after_commit",
    None,
    None,
]


def test_b29_sigkill_at_every_point_leaves_exactly_one_effect(database: Database) -> None:
    """Killed before the write, after it, and after the commit before answering: across all
    retries the payment is made once and every answer is the same outcome."""
    args = ["--mode", "tx", "--db", database.kind, "--dsn", database.dsn]
    args += ["--table", database.table, "--payments", database.payments, "--key", KEY]
    answers: set[str] = set()
    committed = False
    for point in TX_RETRIES:
        run = run_worker(args, point)
        if point is None or (committed and point != "after_commit"):
            assert run.killed_at is None
            assert run.state["replay"] == committed
            answers.add(run.state["outcome"])
        else:
            assert run.killed_at == point
        if point == "after_commit":
            committed = True
        rows = database.payment_rows()
        record = record_of(database)
        if committed:
            assert len(rows) == 1
            assert record is not None
            assert record.state is State.DONE
            assert record.outcome == json.dumps({"id": rows[0][0]}).encode()
        else:  # a crash before the commit leaves nothing at all
            assert rows == []
            assert record is None
    (row,) = database.payment_rows()
    assert answers == {json.dumps({"id": row[0]})}


# Phased order: reserve, then charge through the provider, then finish.
PHASE_RETRIES = [
    "reserve:end",  # phase 1 not committed: nothing but the in-flight claim
    "charge:start",  # between phases: "reserve" committed
    "charge:after_call",  # the provider charged, the phase did not commit
    "charge:after_call",  # again: the provider must deduplicate the repeated call
    "finish:start",  # "charge" committed
    "finish:end",  # the last phase did not commit
    "after_commit",  # done, killed before answering
    None,
    None,
]


@pytest.fixture
def provider() -> Iterator[PaymentProvider]:
    """The test payment provider, served on a loopback port."""
    server = PaymentProvider()
    try:
        yield server
    finally:
        server.stop()


def _log(database: Database, table: str) -> list[str]:
    return sorted(row[0] for row in database.execute(f"SELECT phase FROM {table}"))  # noqa: S608 - a unique_name() table


def test_b30_sigkill_between_and_inside_phases_charges_once(
    database: Database, provider: PaymentProvider
) -> None:
    """Killed inside and between phases, a phased order resumes after its last committed
    phase: the provider charges once (it deduplicates the derived key), every phase's
    writes commit once, and every answer is the one outcome."""
    orders = database.create_table("rs_orders", "key TEXT PRIMARY KEY, status TEXT, charge TEXT")
    log = database.create_table("rs_log", "id TEXT PRIMARY KEY, key TEXT, phase TEXT")
    args = ["--mode", "phases", "--db", database.kind, "--dsn", database.dsn]
    args += ["--table", database.table, "--orders", orders, "--log", log, "--key", KEY]
    args += ["--provider", provider.url]
    answers: set[str] = set()
    for attempt, point in enumerate(PHASE_RETRIES):
        # Each retry comes after the previous holder's lease (30 s) has expired.
        run = run_worker([*args, "--clock-offset", str(40 * attempt)], point)
        assert run.killed_at == point
        record = record_of(database)
        assert record is not None
        if point == "charge:start":
            assert record.recovery_point == "reserve"
            assert _log(database, log) == ["reserve"]
            assert provider.created == 0
        elif point == "charge:after_call":
            assert record.recovery_point == "reserve"
            assert provider.created == 1
        elif point == "finish:end":
            assert record.recovery_point == "charge"
            assert record.state is State.IN_FLIGHT
            assert _log(database, log) == ["charge", "reserve"]
        elif point == "after_commit":
            assert run.state["resumed_from"] == "charge"
            assert run.state["ran"] == ["finish"]
            assert record.state is State.DONE
        if point in ("after_commit", None):
            assert run.state["replay"] == (point is None)
            answers.add(run.state["outcome"])
    assert provider.created == 1
    (key,) = provider.charges
    assert provider.calls[key] == 3  # called by three runs, charged once
    record = record_of(database)
    assert record is not None
    assert key == foreign_key(record, "charge")
    assert KEY not in key
    assert _log(database, log) == ["charge", "finish", "reserve"]
    status = database.execute(f"SELECT status, charge FROM {orders}")  # noqa: S608 - a unique_name() table
    assert status == [("paid", "ch_1")]
    assert answers == {json.dumps({"order": KEY, "charge": "ch_1"})}
