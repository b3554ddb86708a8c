"""The pure decision, exhaustively: every record state against every request."""

from __future__ import annotations

import itertools

import pytest

from retrysafe import Decision, Identity, Record, State, decide
from retrysafe._engine import may_take

NOW = 1_000.0


def record(
    *, state: State, fingerprint: str = "fp", lease_left: float = 10, retention_left: float = 100
) -> Record:
    """A record as a store would hold it, relative to NOW."""
    return Record(
        identity=Identity("ns", "scope", "key"),
        fingerprint=fingerprint,
        state=state,
        token="token",
        created_at=NOW - 5,
        lease_expires_at=NOW + lease_left,
        expires_at=NOW + retention_left,
        outcome=b"out" if state is State.DONE else None,
    )


def test_b7_absent_record_executes() -> None:
    """No record: the request runs."""
    assert decide(None, "fp", NOW) is Decision.EXECUTE


def test_b10_done_record_with_same_fingerprint_replays() -> None:
    """A finished record with the same fingerprint replays, even long after its lease."""
    assert decide(record(state=State.DONE, lease_left=-50), "fp", NOW) is Decision.REPLAY


def test_b13_different_fingerprint_mismatches_in_every_live_state() -> None:
    """Another fingerprint is a mismatch whether the record is done, in flight or stale."""
    for state, lease_left in itertools.product(State, (10, 0, -10)):
        assert decide(record(state=state, lease_left=lease_left), "other", NOW) is Decision.MISMATCH


def test_b14_live_in_flight_record_is_in_flight() -> None:
    """The same request while the first holds a live lease is in flight."""
    assert decide(record(state=State.IN_FLIGHT, lease_left=0.001), "fp", NOW) is Decision.IN_FLIGHT


@pytest.mark.parametrize("lease_left", [0, -0.001, -1000])
def test_b16_expired_lease_executes_for_the_same_request(lease_left: float) -> None:
    """An in-flight record whose lease has ended (at or before now) is taken over."""
    stale = record(state=State.IN_FLIGHT, lease_left=lease_left)
    assert decide(stale, "fp", NOW) is Decision.EXECUTE
    assert may_take(stale, "fp", NOW)


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("fingerprint", ["fp", "other"])
@pytest.mark.parametrize("retention_left", [0, -1])
def test_b21_record_past_retention_executes(
    state: State, fingerprint: str, retention_left: float
) -> None:
    """A record at or past its retention deadline is as good as absent, whatever it holds."""
    expired = record(state=state, retention_left=retention_left)
    assert decide(expired, fingerprint, NOW) is Decision.EXECUTE


def test_may_take_matches_decide_everywhere() -> None:
    """may_take is true exactly where decide says execute, over a grid of every input."""
    for state, fingerprint, lease_left, retention_left in itertools.product(
        State, ("fp", "other"), (10, 0, -10), (100, 0, -1)
    ):
        existing = record(state=state, lease_left=lease_left, retention_left=retention_left)
        executes = decide(existing, fingerprint, NOW) is Decision.EXECUTE
        assert may_take(existing, fingerprint, NOW) == executes
