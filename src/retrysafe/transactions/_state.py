"""What every transaction and phased operation shares whatever its colour: the claim, the outcome.

Pure: no I/O. What a claim's answer decides is the shared flow's (`retrysafe._flow.judge`):
execute, replay, or a refusal raised as `Admission.error` (B13, B14), as for every other face;
the defaults are the flow's too. `Transaction` and `AsyncTransaction` (`_async/transaction.py`
and its generated sync twin) build on `TransactionState`; atomic phases on `ClaimSettings`.
"""

from __future__ import annotations

from typing import Protocol, Required, TypedDict, Unpack, runtime_checkable

from retrysafe._clock import Clock, SystemClock, check_durations
from retrysafe._encryption import Keyring
from retrysafe._engine import Decision
from retrysafe._errors import ConfigurationError, OutcomeError, StoreError, StoreUnavailableError
from retrysafe._flow import DEFAULT_LEASE, DEFAULT_RETENTION, judge
from retrysafe._record import Claim, Identity, Record

__all__ = [
    "CLAIM_ROUNDS",
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "FORGOTTEN_OUTCOME",
    "TRANSACTION_ABORTED",
    "Abortable",
    "ClaimOptions",
    "ClaimSettings",
    "DeadlockRollbackError",
    "TransactionAbortedError",
    "TransactionState",
    "check_keyring",
    "check_not_aborted",
    "check_settings",
    "refusal",
    "was_aborted",
]

FORGOTTEN_OUTCOME = (
    "The transaction ended without tx.complete(outcome); its writes were rolled back, since an "
    "effect without a stored outcome could not be replayed."
)

TRANSACTION_ABORTED = (
    "The transaction was aborted before it could commit: a statement in it failed and the code "
    "went on (it caught the database error, after which PostgreSQL refuses every statement of "
    "the transaction), or a failed write marked it for rollback (a SQLAlchemy flush, a Django "
    "ORM write). It was rolled back: nothing of it was applied. To go on after a statement "
    "that may fail, run that statement in a savepoint: `with conn.transaction():` (psycopg), "
    "`session.begin_nested()` (SQLAlchemy), `with transaction.atomic():` (Django)."
)

CLAIM_ROUNDS = 8
"""How many transactions a claim may begin when the database keeps choosing it as a deadlock's
victim: each round, another transaction that wanted the key went ahead."""


class DeadlockRollbackError(StoreUnavailableError):
    """The database rolled back the whole transaction of a claim to break a deadlock (MySQL's
    and MariaDB's error 1213), every write made in it before the claim included.

    A claim that began the transaction itself runs again in a new one (`CLAIM_ROUNDS`); inside
    the caller's transaction this propagates, since the caller's own writes went too: run the
    whole transaction again.
    """


class TransactionAbortedError(OutcomeError):
    """The transaction was aborted before it could commit (`TRANSACTION_ABORTED`): nothing of
    it was applied. The code that caught a database error inside it is wrong, not the store:
    the same work fails the same way until that statement runs in a savepoint, so a consumer
    rejects the message (`should_requeue`) and a web request gets a 500, not a 503."""


@runtime_checkable
class Abortable(Protocol):
    """A backend that can tell whether its open transaction was aborted (every backend of
    transactional mode; a wrapper made elsewhere, such as the completer's, may not)."""

    def aborted(self) -> bool:
        """Return whether the open transaction was aborted and can no longer commit."""
        ...


def was_aborted(backend: object) -> bool:
    """Return whether `backend` says its open transaction was aborted (one that cannot tell,
    not an `Abortable`, is taken to be usable, as before it could)."""
    return isinstance(backend, Abortable) and backend.aborted()


def check_not_aborted(backend: object) -> None:
    """Raise `TransactionAbortedError` if `backend`'s open transaction was aborted: before an
    outcome is stored in it, or before it commits (which, on PostgreSQL, would silently commit
    nothing). The caller rolls the transaction back."""
    if was_aborted(backend):
        raise TransactionAbortedError(TRANSACTION_ABORTED)


class ClaimOptions(TypedDict, total=False):
    """The keyword arguments of a claim in transactional mode, for its constructors and phases."""

    identity: Required[Identity]
    """The key's (namespace, scope, key)."""
    fingerprint: Required[str]
    """A digest of the request; the same key with another one is refused (B13)."""
    lease: float
    """Seconds a record committed in flight may wait for its holder (default 30)."""
    retention: float
    """Seconds the outcome is kept and replayed after the commit (default 24 hours)."""
    clock: Clock | None
    """The time source (default: the system clock)."""


def check_settings(identity: Identity, fingerprint: str, lease: float, retention: float) -> None:
    """Refuse settings that cannot work, before any I/O."""
    if not isinstance(identity, Identity):
        raise ConfigurationError(f"identity must be a retrysafe.Identity, not {identity!r}.")
    if not isinstance(fingerprint, str):
        raise ConfigurationError("fingerprint must be a str (a digest of the request).")
    check_durations(lease, retention)


def check_keyring(encryption: object) -> Keyring | None:
    """Return `encryption` if it is keys to encrypt with (or None: in clear); refuse anything
    else before any I/O, rather than store in clear what was meant to be sealed."""
    if encryption is None or isinstance(encryption, Keyring):
        return encryption
    raise ConfigurationError(
        "encryption must be a retrysafe.stores.encrypted.Keyring (or None), "
        f"not {type(encryption).__name__}."
    )


def refusal(claim: Claim, fingerprint: str, now: float) -> Exception | None:
    """Return the error that refuses a claim, or None when it executes or replays."""
    admitted = judge(claim, fingerprint, now)
    if admitted is None:  # expired at the `now` the claim itself was made at: cannot happen
        return StoreError("The store refused a claim that the engine says may be taken.")
    if admitted.decision in (Decision.EXECUTE, Decision.REPLAY):
        return None
    return admitted.error(claim.record.identity.namespace)


class ClaimSettings:
    """What one key's claim is made with, checked before any I/O (see `ClaimOptions`)."""

    def __init__(
        self,
        *,
        identity: Identity,
        fingerprint: str,
        lease: float = DEFAULT_LEASE,
        retention: float = DEFAULT_RETENTION,
        clock: Clock | None = None,
    ) -> None:
        check_settings(identity, fingerprint, lease, retention)
        self.identity = identity
        self.fingerprint = fingerprint
        self.lease = lease
        self.retention = retention
        self.clock: Clock = clock or SystemClock()

    def check(self, claim: Claim, now: float) -> None:
        """Raise the refusal of a claim made at `now` that neither executes nor replays."""
        error = refusal(claim, self.fingerprint, now)
        if error is not None:
            raise error


class TransactionState(ClaimSettings):
    """What the sync and async transactions share: the claim's settings, the claim, the outcome."""

    def __init__(self, **options: Unpack[ClaimOptions]) -> None:
        super().__init__(**options)
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
