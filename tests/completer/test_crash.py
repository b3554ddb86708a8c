"""Crash tests: the application killed with SIGKILL at every point, no client retry, then the
completer finishes every order with each foreign call applied once.

Each order is a fresh `python -m tests.completer.worker` process killed when it reports its
point (as `tests/transactions/test_crash.py` does). Its clock runs 100 s behind, so its 30 s
lease has already expired; then one `retrysafe complete --once` process finishes them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from retrysafe import State
from retrysafe.transactions import foreign_key
from tests.completer import orders
from tests.completer.conftest import Shop

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from retrysafe.cli import main; main()"]
WORKER_SECONDS = 60.0
POINTS = [*orders.POINTS, "after_commit"]


def run_worker(args: list[str], crash_at: str) -> str | None:
    """Run the worker once; SIGKILL it as soon as it reports `crash_at`. Return the point it
    was killed at, or None if it finished."""
    command = [sys.executable, "-m", "tests.completer.worker", *args, "--crash-at", crash_at]
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        watchdog = threading.Timer(WORKER_SECONDS, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith(b"at:"):
                    os.kill(process.pid, signal.SIGKILL)
                    assert process.wait(10) == -signal.SIGKILL
                    return line[3:].decode().split(" ", 1)[0]
                if line.startswith(b"outcome:"):
                    assert process.wait(10) == 0
                    return None
            process.wait(10)
            assert process.stderr is not None
            raise AssertionError(f"the worker ended without a result:\n{process.stderr.read()}")
        finally:
            watchdog.cancel()


def test_b30_sigkill_at_every_point_without_a_retry_the_completer_finishes_each_once(
    shop: Shop,
) -> None:
    """Killed before, inside and between phases (and after the commit) with no client retry,
    every order is finished by one completer pass: each phase's writes commit once, the
    provider creates one charge per order, and is called twice only for the order killed
    after its call and before its phase committed."""
    database = shop.database
    for point in POINTS:
        request = orders.request_of(point, **shop.spec())
        args = ["--db", database.kind, "--dsn", database.dsn, "--table", database.table]
        args += ["--key", point, "--request", request.decode(), "--clock-offset", "-100"]
        assert run_worker(args, point) == point
    assert shop.resumable_rows() == len(POINTS) - 1  # the finished one left no request behind

    app = "tests.completer.orders:registry"
    completed = subprocess.run(
        [*CLI, "complete", "--store", database.url, "--app", app, "--once"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"completed {len(POINTS) - 1}, failed 0" in completed.stdout

    assert shop.provider.created == len(POINTS)
    for point in POINTS:
        record = shop.record(point)
        assert record is not None
        assert record.state is State.DONE, point
        key = foreign_key(record, "charge")
        assert shop.provider.calls[key] == (2 if point == "charge:after_call" else 1), point
        assert shop.phases_logged(point) == ["charge", "finish", "reserve"], point
        outcome = json.loads(record.outcome or b"")
        assert outcome == {"order": point, "charge": shop.provider.charges[key]["id"]}
    statuses = database.execute(f"SELECT status FROM {shop.orders}")  # noqa: S608 - a test table
    assert statuses == [("paid",)] * len(POINTS)
    assert shop.resumable_rows() == 0
