"""Crash tests on Django's ORM: a Django process killed with SIGKILL at every point, then retried.

Each run is a fresh `python -m tests.transactions.django_app crash` process on the test's own
tables (the `database` fixture: a SQLite file, or the real PostgreSQL server). The test kills
it with SIGKILL when it reports the chosen point, checks what the database holds, and starts
the next retry. Two shapes of work: `unit`, `retrysafe.transactions.django.atomic` inside the
caller's `transaction.atomic()`; `view`, a request through Django's handler to a
`@transactional` view inside the view's own `transaction.atomic()`. Across every kill and
retry the payment and its record commit together or not at all, the payment is made once, and
every answer that reaches the client is the one outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from retrysafe import State
from tests.transactions.conftest import Database

ROOT = Path(__file__).resolve().parents[2]
KEY = "order-1"
WORKER_SECONDS = 120.0

# The points, in the order the retries hit them. Before the first "after_commit" a kill
# leaves nothing at all; once the payment committed, later runs replay: they pass only the
# points outside the key's block (before the claim, before the caller's commit, after it).
RETRIES = [
    "before_claim",
    "after_claim",
    "after_write",
    "before_commit",
    "after_commit",
    "before_claim",
    "before_commit",
    "after_commit",
    None,
]


@dataclass(frozen=True)
class Run:
    """One run: the point it was killed at (None if it finished) and what it reported."""

    killed_at: str | None
    state: dict[str, Any]


def run_once(database: Database, mode: str, crash_at: str | None) -> Run:
    """Run the Django process once; SIGKILL it as soon as it reports `crash_at`."""
    config = {
        "db": database.kind,
        "dsn": database.dsn,
        "table": database.table,
        "payments": database.payments,
        "mode": mode,
        "key": KEY,
        "crash_at": crash_at or "",
    }
    command = [sys.executable, "-m", "tests.transactions.django_app", "crash", json.dumps(config)]
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
                    return Run(point, json.loads(state or "{}"))
                if line.startswith("outcome:"):
                    assert process.wait(10) == 0
                    return Run(None, json.loads(line.removeprefix("outcome:")))
            process.wait(10)
            raise AssertionError(f"the process ended without a result:\n{process.stderr.read()}")
        finally:
            watchdog.cancel()


def records(database: Database, mode: str) -> list[Any]:
    """The records of the mode's namespace, as the store sees them."""
    store = database.store()
    try:
        return store.list_records(namespace="orders" if mode == "unit" else "http")
    finally:
        store.close()


@pytest.mark.parametrize("mode", ["unit", "view"])
def test_b29_django_sigkill_at_every_point_leaves_both_or_neither(
    database: Database, mode: str
) -> None:
    """Killed before the claim, after it, after the ORM write, before the commit and after
    it: the payment and its record are both there or both absent after every kill, the
    payment is made once across all retries, and every answer is the same outcome."""
    answers: set[str] = set()
    committed = False
    for point in RETRIES:
        run = run_once(database, mode, point)
        assert run.killed_at == point
        if point in ("after_commit", None):
            assert run.state["replay"] is committed  # only the first commit ran the work
            assert run.state.get("status", 201) == 201
            answers.add(run.state["outcome"])
        if point == "after_commit":
            committed = True
        rows = database.payment_rows(KEY)
        found = records(database, mode)
        if committed:
            assert len(rows) == 1
            (record,) = found
            assert record.state is State.DONE
            if mode == "unit":
                assert record.outcome == json.dumps({"id": rows[0][0]}).encode()
        else:  # a kill before the commit leaves neither the payment nor its record
            assert rows == []
            assert found == []
    (row,) = database.payment_rows(KEY)
    assert answers == {json.dumps({"id": row[0]})}
