"""The pure decision at the heart of every face: what to do with an incoming request.

No I/O, no clock of its own: the caller passes the record it found (or None), the request's
fingerprint and the current time, and gets one of four decisions back.
"""

from __future__ import annotations

import enum

from retrysafe._record import Record, State

__all__ = ["Decision", "decide", "may_take"]


class Decision(enum.Enum):
    """What to do with a request that carries an idempotency key."""

    EXECUTE = "execute"
    """No live record: claim the key and run the operation."""
    REPLAY = "replay"
    """A finished record with the same fingerprint: return its outcome, do not run."""
    MISMATCH = "mismatch"
    """The key was used for a different request: refuse (B13)."""
    IN_FLIGHT = "in_flight"
    """The first request is still running under a live lease: wait or refuse (B14, B15)."""


def may_take(record: Record | None, fingerprint: str, now: float) -> bool:
    """Return whether a claim may take the key: absent, past retention, or an expired lease.

    An expired lease is taken over only by the same request (same fingerprint); a different
    request with the key is a mismatch whatever the lease says (B13 before B14).
    """
    if record is None or record.expires_at <= now:
        return True
    return (
        record.state is State.IN_FLIGHT
        and record.lease_expires_at <= now
        and record.fingerprint == fingerprint
    )


def decide(record: Record | None, fingerprint: str, now: float) -> Decision:
    """Return the decision for a request with `fingerprint`, given the stored `record`."""
    if record is None or may_take(record, fingerprint, now):
        return Decision.EXECUTE
    if record.fingerprint != fingerprint:
        return Decision.MISMATCH
    if record.state is State.DONE:
        return Decision.REPLAY
    return Decision.IN_FLIGHT
