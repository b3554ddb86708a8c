"""The sans-I/O admission of one operation: claim, then execute, replay, refuse, or wait.

`admission()` is a generator: it yields `ClaimStep` and `WaitStep`, is sent the store's answers
(`store.claim`, `store.wait`), and returns an `Admission`. The drivers in `drivers.py` run it
with a sync or an async store; `judge()` is its first step alone, for transactional mode, where
the claim is a statement inside the caller's transaction.

A record the previous release wrote is honoured (B39) by two more steps the drivers take, only
where the request's identity or fingerprint is `Revised` (this release computes it otherwise):
`successor()` picks the identity to admit on (the former one where a live record is there),
and `adopted()` the fingerprint to admit again with (the former one where the record found
carries it), so replay, waiting and takeover work as for any matching request.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Final, Protocol, cast

from retrysafe._clock import Clock
from retrysafe._concurrency import monotonic
from retrysafe._engine import Decision, decide
from retrysafe._errors import InFlightError, KeyMismatchError
from retrysafe._fingerprint import Revised
from retrysafe._record import Claim, Identity, Record
from retrysafe._values import quick_init

DEFAULT_RETENTION: Final = 24 * 3600.0
"""How long a finished operation's outcome is kept and replayed (B21): 24 hours."""
DEFAULT_LEASE: Final = 30.0
"""How long an in-flight claim lives without a renewal (B16); renewed every third of it."""
DEFAULT_WAIT: Final = 10.0
"""How long a duplicate waits for the first operation's outcome before it is refused (B15)."""
CLAIM_RETRIES: Final = 3
"""Claims one admission makes when the record it finds expires meanwhile (a lagging clock)."""
IN_FLIGHT_RETRY_AFTER: Final = 1
"""Seconds after which a duplicate refused as in flight may retry (Retry-After, B14)."""


class Terms(Protocol):
    """How long a claim lives (`lease`), its outcome is kept (`retention`), and a duplicate
    waits (`wait`), in seconds: the HTTP `Settings` and the decorator's plan both have them."""

    @property
    def lease(self) -> float: ...
    @property
    def retention(self) -> float: ...
    @property
    def wait(self) -> float: ...


@dataclass(frozen=True, slots=True)
class ClaimStep:
    """Ask the store to claim `identity` (`store.claim`); send back the `Claim`."""

    identity: Identity
    fingerprint: str
    lease: float
    retention: float

    def terms(self) -> dict[str, float]:
        """The claim's keyword arguments besides identity and fingerprint."""
        return {"lease": self.lease, "retention": self.retention}


@dataclass(frozen=True, slots=True)
class WaitStep:
    """Wait for the running operation's outcome (`store.wait`); send back the record or None."""

    identity: Identity
    timeout: float


@quick_init
@dataclass(frozen=True, slots=True)
class Admission:
    """What an admission decided.

    `claim` is set for `EXECUTE` (an acquired claim: run the operation under its token);
    `record` for the others (the stored outcome to replay, or the record that refused).
    """

    decision: Decision
    claim: Claim | None = None
    record: Record | None = None
    retry_after: int = IN_FLIGHT_RETRY_AFTER

    @property
    def token(self) -> str:
        """The fencing token of an acquired claim."""
        if self.claim is None:
            raise ValueError(f"an admission to {self.decision} holds no claim")
        return self.claim.token

    def error(self, what: str) -> KeyMismatchError | InFlightError:
        """Return the exception that refuses a mismatch or in-flight admission of `what`."""
        key = self.record.identity.key if self.record is not None else "?"
        if self.decision is Decision.MISMATCH:
            return KeyMismatchError(
                f"The key {key!r} of {what} was already used with different arguments."
            )
        return InFlightError(
            f"A call of {what} with the key {key!r} is still running.",
            retry_after=float(self.retry_after),
            lease_expires_at=None if self.record is None else self.record.lease_expires_at,
        )


AdmissionFlow = Generator[ClaimStep | WaitStep, Claim | Record | None, Admission]


def advance(
    steps: AdmissionFlow, answer: Claim | Record | None
) -> ClaimStep | WaitStep | Admission:
    """Send the store's `answer` to an admission (None to start it); return its next step, or
    the Admission once it has decided."""
    try:
        return steps.send(answer)
    except StopIteration as done:
        result: Admission = done.value
        return result


def judge(claim: Claim, fingerprint: str, now: float) -> Admission | None:
    """Return the admission a claim's answer decides, or None when the key must be claimed
    again (the record it found expired meanwhile). Never waits: in flight is final here."""
    if claim.acquired:
        return Admission(Decision.EXECUTE, claim=claim)
    decision = decide(claim.record, fingerprint, now)
    return None if decision is Decision.EXECUTE else Admission(decision, record=claim.record)


def former_identity(identity: Identity) -> Identity:
    """Return the identity the previous release gave a request whose scope is `Revised` (its
    caller is named otherwise now, B39)."""
    return Identity(identity.namespace, cast(Revised, identity.scope).former, identity.key)


def successor(
    identity: Identity, former: Identity, found: Record | None, now: float, held: Holds
) -> Identity:
    """Return the identity to admit a request on: `former`, where the previous release's live
    record is there (`found`: done, in flight or waiting for attention) or an outcome is held
    for it here (B19: it answers even while the store is unreachable), so the whole request
    runs on it; else its own `identity` (B39)."""
    live = found is not None and found.expires_at > now
    return former if live or held.holds_for(former) else identity


class Holds(Protocol):
    """What holds outcomes (`holding.Holdings`): whether one is held for an identity."""

    def holds_for(self, identity: Identity) -> bool: ...


def adopted(admitted: Admission, fingerprint: str) -> str | None:
    """Return the fingerprint to admit again with, where `admitted` is a mismatch only in form:
    the record found carries the previous release's form of `fingerprint` (B39); else None."""
    if admitted.decision is not Decision.MISMATCH or type(fingerprint) is not Revised:
        return None
    record = admitted.record
    return (
        fingerprint.former
        if record is not None and record.fingerprint == fingerprint.former
        else None
    )


def admission(
    identity: Identity,
    fingerprint: str,
    terms: Terms,
    *,
    clock: Clock,
    elapsed: Callable[[], float] = monotonic,
) -> AdmissionFlow:
    """The admission of one operation: claim, then execute, replay, refuse, or wait and decide.

    A duplicate in flight waits up to `terms.wait` seconds (measured with `elapsed`) for the
    outcome, then is refused (B15). A record that expires under a duplicate's eyes is claimed
    again, up to `CLAIM_RETRIES` times, so a store whose clock lags ours cannot spin the caller.
    """
    deadline: float | None = None  # set when a duplicate first finds the key in flight
    retries = CLAIM_RETRIES
    while True:
        claim = cast(Claim, (yield ClaimStep(identity, fingerprint, terms.lease, terms.retention)))
        if claim.acquired:
            return Admission(Decision.EXECUTE, claim=claim)
        record: Record | None = claim.record
        while record is not None:
            decision = decide(record, fingerprint, clock.now())
            if decision is Decision.EXECUTE:  # expired meanwhile: claim again, a few times
                retries -= 1
                if retries > 0:
                    break
                return Admission(Decision.IN_FLIGHT, record=record)
            if decision is not Decision.IN_FLIGHT:
                return Admission(decision, record=record)
            if deadline is None:
                deadline = elapsed() + terms.wait
            remaining = deadline - elapsed()
            if remaining <= 0:
                return Admission(Decision.IN_FLIGHT, record=record)
            record = cast(Record | None, (yield WaitStep(identity, remaining)))
