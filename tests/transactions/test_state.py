"""The pure judgement of a claim in transactional mode: the shared flow's, for every mode."""

from __future__ import annotations

import pytest

from retrysafe import Claim, Identity, InFlightError, KeyMismatchError, Record, State, StoreError
from retrysafe._flow import DEFAULT_LEASE, DEFAULT_RETENTION, IN_FLIGHT_RETRY_AFTER
from retrysafe.transactions._state import ClaimSettings, refusal

NOW = 1_000.0
IDENTITY = Identity("payments", "tenant-a", "pay-1")


def record(state: State, *, fingerprint: str = "f", lease_left: float = 60.0) -> Record:
    """A record of IDENTITY as a claim finds it at NOW."""
    return Record(
        identity=IDENTITY,
        fingerprint=fingerprint,
        state=state,
        token="t",
        created_at=NOW - 1,
        lease_expires_at=NOW + lease_left,
        expires_at=NOW + 3600,
        outcome=b"done" if state is State.DONE else None,
    )


def test_acquired_claims_and_replays_are_not_refused() -> None:
    """A claim the caller acquired runs, and a finished key with the same request replays."""
    assert refusal(Claim(record(State.IN_FLIGHT), acquired=True), "f", NOW) is None
    assert refusal(Claim(record(State.DONE), acquired=False), "f", NOW) is None


def test_b13_another_request_is_refused_as_a_mismatch() -> None:
    """The same key with another fingerprint is refused with KeyMismatchError naming the key."""
    error = refusal(Claim(record(State.DONE), acquired=False), "other", NOW)
    assert isinstance(error, KeyMismatchError)
    assert "'pay-1'" in str(error)


def test_b14_a_live_holder_is_refused_with_the_shared_retry_after() -> None:
    """A key held under a live lease is refused as in flight, retry after the flow's constant
    (as the HTTP middleware's Retry-After), however long the holder's lease still runs."""
    error = refusal(Claim(record(State.IN_FLIGHT, lease_left=25.0), acquired=False), "f", NOW)
    assert isinstance(error, InFlightError)
    assert error.retry_after == IN_FLIGHT_RETRY_AFTER


def test_a_claim_refused_on_a_takeable_record_is_a_store_error() -> None:
    """A store that refuses a claim on an expired lease contradicts the engine: StoreError."""
    error = refusal(Claim(record(State.IN_FLIGHT, lease_left=-1.0), acquired=False), "f", NOW)
    assert isinstance(error, StoreError)


def test_claim_settings_default_to_the_flow_and_check_before_any_io() -> None:
    """The lease and retention default to the shared flow's; impossible ones are refused."""
    settings = ClaimSettings(identity=IDENTITY, fingerprint="f")
    assert (settings.lease, settings.retention) == (DEFAULT_LEASE, DEFAULT_RETENTION)
    with pytest.raises(InFlightError):
        settings.check(Claim(record(State.IN_FLIGHT), acquired=False), NOW)
    with pytest.raises(ValueError, match="positive"):
        ClaimSettings(identity=IDENTITY, fingerprint="f", lease=0)
    for odd in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            ClaimSettings(identity=IDENTITY, fingerprint="f", retention=odd)
