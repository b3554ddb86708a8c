"""B16, B19, B40: the warnings and errors the flow logs about an operation (interrupted, its
lease lapsed, its outcome held, stored late or lost) name it by namespace, key and scope
digest, never by its raw scope (an e-mail, a tenant), as docs/observability.md promises."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import retrysafe
from retrysafe import open_async_store, open_store
from retrysafe._engine import Decision
from retrysafe._flow import SyncFlow
from retrysafe._record import Identity
from retrysafe.observe import scope_digest
from tests.flow.conftest import wait_until

SCOPE = "alice@example.com"
IDENTITY = Identity("tests.flow", SCOPE, "k-1")


@dataclass(frozen=True)
class _Terms:
    lease: float = 30.0
    retention: float = 3600.0
    wait: float = 0.0


def _messages(caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    """Return each logged `retrysafe_event`'s message, after checking that no message of any
    record names the raw scope."""
    for record in caplog.records:
        assert SCOPE not in record.getMessage(), record.getMessage()
    return {
        str(record.retrysafe_event): record.getMessage()
        for record in caplog.records
        if hasattr(record, "retrysafe_event")
    }


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the SQLite file's write lock: the store reads but cannot write."""
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def test_b19_b35_held_stored_late_and_lost_outcomes_are_logged_without_the_scope(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outcome held (the store cannot write), then stored late; another held, then lost
    when its store is closed: every message names `tests.flow/k-1 (scope <digest>)`."""
    caplog.set_level(logging.DEBUG, logger="retrysafe")
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}?timeout=0.2")
    flow = SyncFlow(store)
    for attempt in ("late", "lost"):
        identity = Identity(IDENTITY.namespace, SCOPE, f"k-{attempt}")
        admitted = flow.admit(identity, "fp", _Terms())
        assert admitted.decision is Decision.EXECUTE
        with _locked(path):
            with flow.execution(admitted, _Terms()) as run:
                run.finish(b"the outcome")
            assert len(flow.holdings) == 1
            if attempt == "lost":
                store.close()
                flow.nudge_all()
                wait_until(lambda: len(flow.holdings) == 0)
        if attempt == "late":
            assert flow.drain(10) is True
    messages = _messages(caplog)
    assert {"store_failed", "completed_late", "held_lost"} <= set(messages)
    assert f"tests.flow/k-late (scope {scope_digest(SCOPE)})" in messages["completed_late"]
    assert f"tests.flow/k-lost (scope {scope_digest(SCOPE)})" in messages["held_lost"]


def test_b16_b40_b35_interrupted_and_lapsed_operations_are_logged_without_the_scope(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An async operation cancelled while it runs, and one that blocks its loop past its
    lease: the `interrupted` and `lease_lapsed` warnings name no raw scope."""
    caplog.set_level(logging.DEBUG, logger="retrysafe")

    async def main() -> None:
        store = open_async_store("memory://")

        @retrysafe.idempotent(store, key="order_id", scope=SCOPE, namespace="tests.flow")
        async def charge(order_id: str) -> None:
            await asyncio.sleep(10)

        @retrysafe.idempotent(store, key="order_id", scope=SCOPE, namespace="tests.flow", lease=0.3)
        async def block(order_id: str) -> str:
            time.sleep(0.8)  # noqa: ASYNC251 -- sync work blocking the loop: no renewal runs
            return order_id

        task = asyncio.create_task(charge("k-1"))
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert await block("k-2") == "k-2"
        await store.aclose()

    asyncio.run(main())
    messages = _messages(caplog)
    assert {"interrupted", "lease_lapsed"} <= set(messages)
    assert f"tests.flow/k-1 (scope {scope_digest(SCOPE)})" in messages["interrupted"]
    assert f"tests.flow/k-2 (scope {scope_digest(SCOPE)})" in messages["lease_lapsed"]
