"""B19 in the flow itself: a held outcome's schedule (pure), and its answer to duplicates
against a real store that reads but cannot write (SQLite locked by another connection)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from retrysafe import State, open_store
from retrysafe._engine import Decision
from retrysafe._flow import SyncFlow
from retrysafe._flow.holding import RETRY_CAP, RETRY_FIRST, Held, Step
from retrysafe._record import Identity
from tests.flow.conftest import wait_until


@dataclass(frozen=True)
class _Terms:
    lease: float = 30.0
    retention: float = 3600.0
    wait: float = 0.0


IDENTITY = Identity("tests.flow", "", "k")


@contextlib.contextmanager
def _held_while_locked(flow: SyncFlow, path: Path) -> Iterator[None]:
    """Admit `IDENTITY` and finish it while another connection holds the SQLite file's write
    lock, so its outcome is held; the lock is let go when the block ends."""
    admitted = flow.admit(IDENTITY, "fp", _Terms())
    assert admitted.decision is Decision.EXECUTE
    lock = sqlite3.connect(path, isolation_level=None)
    try:
        with flow.execution(admitted, _Terms()) as run:
            lock.execute("BEGIN EXCLUSIVE")  # WAL: others read, nobody else writes
            run.finish(b"the outcome")
        assert len(flow.holdings) == 1
        yield
    finally:
        lock.execute("ROLLBACK")
        lock.close()


def _held(now: float = 100.0, wall: float = 1_000.0) -> Held:
    return Held.start(
        IDENTITY, "token", b"outcome", lease=3.0, retention=60.0, claimed=None, now=now, wall=wall
    )


def test_b19_completion_retries_back_off_doubling_to_the_cap_with_jitter() -> None:
    """Each failed completion doubles the pause up to the cap, jittered between half and all
    of it; the first retry comes within `RETRY_FIRST`."""
    held = _held(now=0.0)
    assert RETRY_FIRST / 2 <= held.complete_at <= RETRY_FIRST
    delays = []
    for jitter in [0.0, 0.999] * 6:
        delay = held.delay
        held.failed_completion(0.0, jitter)
        assert delay / 2 <= held.complete_at <= delay
        delays.append(delay)
    assert delays[:3] == [2 * RETRY_FIRST, 4 * RETRY_FIRST, 8 * RETRY_FIRST]
    assert delays[-1] == RETRY_CAP
    assert held.attempts == 13


def test_b19_renewals_go_on_and_a_landed_renewal_makes_the_completion_due() -> None:
    """A held outcome's lease is renewed every third of it whatever happens to completions;
    a renewal that lands means the store is back, so the completion is tried at once."""
    held = _held(now=100.0)  # lease 3 s: the first renewal is due at 101
    held.complete_at = 110.0  # a completion far off, after many failures
    assert held.next_step(100.5, 1_000.0) == 0.5
    assert held.next_step(101.0, 1_000.0) is Step.RENEW
    held.failed_renewal(101.0)
    assert held.next_step(101.5, 1_000.0) == 0.5
    held.renewed(102.0)
    assert held.next_step(102.0, 1_000.0) is Step.COMPLETE
    assert held.renew_at == 103.0


def test_b19_a_held_outcome_past_its_retention_is_given_up() -> None:
    """Once its retention would have ended, a held outcome is no longer retried (B21)."""
    held = _held()
    assert held.next_step(100.0, 1_059.0) is not Step.EXPIRED
    assert held.next_step(100.0, 1_060.0) is Step.EXPIRED


def test_b19_the_held_outcome_wins_over_the_store_showing_our_claim_in_flight(
    tmp_path: Path,
) -> None:
    """The store reads but cannot write: the outcome is held, and a duplicate gets it, both
    from the flow's own answer and over the store's in-flight record under our token; a record
    under another token is the store's to decide. Unlocked, the outcome lands."""
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}?timeout=0.2")
    flow = SyncFlow(store)
    try:
        with _held_while_locked(flow, path):
            (found,) = store.list_records()
            assert found.state is State.IN_FLIGHT

            now = store.clock.now()
            over = flow.holdings.answer_over(IDENTITY, "fp", now, found)
            assert over is not None
            assert over.decision is Decision.REPLAY
            assert over.record is not None
            assert over.record.outcome == b"the outcome"
            other = flow.holdings.answer_over(IDENTITY, "other", now, found)
            assert other is not None
            assert other.decision is Decision.MISMATCH
            taken = flow.holdings.answer_over(IDENTITY, "fp", now, replace(found, token="new"))
            assert taken is None

            again = flow.admit(IDENTITY, "fp", _Terms())
            assert again.decision is Decision.REPLAY
            assert flow.counters.replays == 1
        assert flow.drain(10) is True
        (stored,) = store.list_records()
        assert stored.state is State.DONE
        assert stored.outcome == b"the outcome"
        assert flow.counters.completed_late == 1
    finally:
        store.close()


def test_b19_an_outcome_whose_store_was_closed_is_not_held(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store was closed while the operation ran: no retry can store the outcome, so it is
    not held (and retried every few seconds for the life of the process); the failure is
    logged and counted, and the key stays in flight until its lease ends."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)
    flow = SyncFlow(store)
    admitted = flow.admit(IDENTITY, "fp", _Terms())
    with flow.execution(admitted, _Terms()) as run:
        store.close()
        run.finish(b"the outcome")
    assert len(flow.holdings) == 0
    assert flow.counters.complete_failures == 1
    assert "the store is closed" in caplog.text
    reopened = open_store(url)
    try:
        (found,) = reopened.list_records()
        assert found.state is State.IN_FLIGHT
    finally:
        reopened.close()


def test_b19_a_held_outcome_is_given_up_once_its_store_is_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An outcome held while the store could not write is given up, logged as lost, when the
    store is then closed: a closed store stores nothing, however long it is retried."""
    path = tmp_path / "store.db"
    store = open_store(f"sqlite:///{path}?timeout=0.2")
    flow = SyncFlow(store)
    caplog.set_level(logging.ERROR)
    with _held_while_locked(flow, path):
        store.close()
        flow.nudge_all()
        wait_until(lambda: len(flow.holdings) == 0)
    assert "was closed before it could be stored" in caplog.text
    assert flow.counters.completed_late == 0
