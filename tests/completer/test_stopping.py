"""`retrysafe complete` stops on SIGTERM (and Ctrl+C) after the operation in progress: in its
first pass as in later ones, it finishes that operation, leaves the others of the batch to the
next completer, and exits 0, so a supervisor's grace period never ends it mid-phase."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from retrysafe import State
from tests.completer import orders
from tests.completer.conftest import Shop
from tests.completer.test_crash import CLI, ROOT, run_worker

KEYS = ("stop-1", "stop-2", "stop-3")
SECONDS = 60.0


def wait_for(condition: object, what: str) -> None:
    """Poll `condition()` (bounded)."""
    deadline = time.monotonic() + SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_b30_sigterm_stops_the_completer_after_the_operation_in_progress(
    shop: Shop, tmp_path: Path
) -> None:
    """Three orders abandoned before their charge; the completer is stopped inside the first
    one's last phase: it finishes that order, runs no other, and exits 0."""
    database = shop.database
    for key in KEYS:
        request = orders.request_of(key, **shop.spec())
        args = ["--db", database.kind, "--dsn", database.dsn, "--table", database.table]
        args += ["--key", key, "--request", request.decode(), "--clock-offset", "-100"]
        assert run_worker(args, "charge:start") == "charge:start"

    log, go = tmp_path / "paused.log", tmp_path / "go"
    env = {**os.environ, "PAUSE_LOG": str(log), "PAUSE_GO": str(go)}
    command = [
        *CLI,
        "complete",
        "--store",
        database.url,
        "--app",
        "tests.completer.pausing:registry",
    ]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            wait_for(lambda: log.exists() and "at:finish" in log.read_text(), "never paused")
            process.send_signal(signal.SIGTERM)
            go.touch()
            out, err = process.communicate(timeout=SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert "completed 1, failed 0" in out
    records = [shop.record(key) for key in KEYS]
    assert [r.state for r in records if r is not None].count(State.DONE) == 1
    assert log.read_text().count("at:finish") == 1
    assert shop.resumable_rows() == len(KEYS) - 1
