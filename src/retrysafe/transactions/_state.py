"""What every transaction shares whatever its colour: settings, the claim, the outcome.

Pure: no I/O. `Transaction` and `AsyncTransaction` (`_async/transaction.py` and its generated
sync twin) build on `TransactionState`; atomic phases use `check_settings` and `refusal` too.
"""

from __future__ import annotations

from retrysafe._clock import Clock, SystemClock
from retrysafe._engine import Decision, decide
from retrysafe._errors import ConfigurationError, InFlightError, KeyMismatchError, StoreError
from retrysafe._record import Claim, Identity, Record

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "FORGOTTEN_OUTCOME",
    "TransactionState",
    "check_settings",
    "refusal",
]

DEFAULT_RETENTION = 24 * 3600.0
"""How long a finished outcome is kept and replayed (B21): 24 hours."""
DEFAULT_LEASE = 30.0
"""How long a claim that is committed in flight (a phased operation) lives without a renewal."""

FORGOTTEN_OUTCOME = (
    "The transaction ended without tx.complete(outcome); its writes were rolled back, since an "
    "effect without a stored outcome could not be replayed."
)


def check_settings(identity: Identity, fingerprint: str, lease: float, retention: float) -> None:
    """Refuse settings that cannot work, before any I/O."""
    if not isinstance(identity, Identity):
        raise ConfigurationError(f"identity must be a retrysafe.Identity, not {identity!r}.")
    if not isinstance(fingerprint, str):
        raise ConfigurationError("fingerprint must be a str (a digest of the request).")
    if lease <= 0 or retention <= 0:
        raise ConfigurationError("lease and retention must be positive seconds.")


def refusal(claim: Claim, fingerprint: str, now: float) -> Exception | None:
    """Return the error for a claim that was not acquired, or None when it is a replay."""
    record = claim.record
    decision = decide(record, fingerprint, now)
    if decision is Decision.REPLAY:
        return None
    if decision is Decision.MISMATCH:
        return KeyMismatchError(
            f"Idempotency key {record.identity.key!r} was already used with a different request."
        )
    if decision is Decision.IN_FLIGHT:
        return InFlightError(
            f"A request is outstanding for idempotency key {record.identity.key!r}.",
            retry_after=max(1.0, record.lease_expires_at - now),
        )
    return StoreError("The store refused a claim that the engine says may be taken.")


class TransactionState:
    """What the sync and async transactions share: settings, the claim, the outcome."""

    def __init__(
        self,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float,
        retention: float,
        clock: Clock | None,
    ) -> None:
        check_settings(identity, fingerprint, lease, retention)
        self.identity = identity
        self.fingerprint = fingerprint
        self.lease = lease
        self.retention = retention
        self.clock: Clock = clock or SystemClock()
        self._claim: Claim | None = None
        self._outcome: bytes | None = None
        self._entered = False

    @property
    def record(self) -> Record:
        """The record as the claim found or made it."""
        return self._held().record

    @property
    def replay(self) -> bool:
        """Whether the key has a stored outcome: return `outcome`, write nothing."""
        return not self._held().acquired

    @property
    def taken_over(self) -> bool:
        """Whether the claim took over a record whose holder stopped renewing its lease."""
        return self._held().taken_over

    @property
    def outcome(self) -> bytes | None:
        """The stored outcome on a replay, or the one given to `complete` (None before it)."""
        claim = self._held()
        if not claim.acquired:
            return claim.record.outcome
        return self._outcome

    def complete(self, outcome: bytes) -> None:
        """Set the outcome that commits with the writes and is replayed to every duplicate.

        Args:
            outcome: the encoded result (a response body, a JSON document); stored as is.
        """
        if self.replay:
            raise RuntimeError("This key is a replay: there is nothing to complete.")
        if not isinstance(outcome, bytes | bytearray | memoryview):
            raise TypeError(f"An outcome is bytes, not {type(outcome).__name__}.")
        self._outcome = bytes(outcome)

    def _held(self) -> Claim:
        if self._claim is None:
            raise RuntimeError("Use the transaction in a `with` block first.")
        return self._claim

    def _start(self) -> None:
        if self._entered:
            raise RuntimeError("A transaction runs once; open a new one for the next attempt.")
        self._entered = True

    def _accept(self, claim: Claim, now: float) -> None:
        """Keep `claim` if it is acquired or a replay; raise the refusal otherwise."""
        if not claim.acquired:
            error = refusal(claim, self.fingerprint, now)
            if error is not None:
                raise error
        self._claim = claim

    def _outcome_to_store(self, exc_type: type[BaseException] | None) -> bytes | None:
        """Return the outcome to store before the commit, or None to roll back instead."""
        claim = self._claim
        if exc_type is not None or claim is None or not claim.acquired:
            # An error rolls everything back; a replay rolls back anything the block wrote.
            return None
        return self._outcome

    def _forgot_outcome(self, exc_type: type[BaseException] | None) -> bool:
        """Return whether the block ended normally on an acquired claim without `complete`."""
        claim = self._claim
        return exc_type is None and claim is not None and claim.acquired and self._outcome is None
