"""What the flow counts and logs when a store call fails: one place for every face."""

from __future__ import annotations

import enum
import logging
import threading
from typing import Final, Generic, Protocol, TypeVar

from retrysafe._engine import Decision
from retrysafe._errors import FencedError, StoreClosedError
from retrysafe._flow.admission import Admission
from retrysafe._flow.observing import Observation, fields, finish, named, observed
from retrysafe._record import Claim, Identity, State

__all__ = ["LOGGER", "Claimed", "Count", "Counters", "Finisher"]

StoreT = TypeVar("StoreT")
LOGGER: Final = logging.getLogger("retrysafe")


class Count(enum.StrEnum):
    """What the flow counts.

    executions: operations that ran under a claim; replays: calls answered from a stored
    (or held) outcome; complete_failures: failed attempts to store an outcome, the first and
    every retry (B19); held: outcomes kept in the process because storing them failed;
    completed_late: held outcomes that a retry stored; fenced: claims found taken over when
    completing or renewing (B17); restored: outcomes stored under a new claim because their
    record was gone, lost by the store (B19); release_failures: claims not released (they
    end with their lease); renew_failures: failed renewals, other than fencing; interrupted:
    operations cancelled or interrupted while they ran, their claims kept until their leases
    end (B40); lapsed: operations whose lease went unrenewed longer than itself while they
    ran (their event loop blocked, a C call holding the GIL, their process paused), so that
    another caller may have taken the key over (B16); taken_over: claims acquired by taking
    over another's lease that had ended with its outcome unknown, so the operation ran again
    (B16), and completions that took their claim back from such a taker (both ran).
    """

    EXECUTIONS = "executions"
    REPLAYS = "replays"
    COMPLETE_FAILURES = "complete_failures"
    HELD = "held"
    COMPLETED_LATE = "completed_late"
    FENCED = "fenced"
    RESTORED = "restored"
    RELEASE_FAILURES = "release_failures"
    RENEW_FAILURES = "renew_failures"
    INTERRUPTED = "interrupted"
    LAPSED = "lapsed"
    TAKEN_OVER = "taken_over"


_NAMES: Final = {count: count.value for count in Count}


class Claimed(Protocol):
    """A claim whose outcome is to be stored: an execution, or a held outcome."""

    identity: Identity
    token: str


class Counters:
    """Counts of what a face did, for monitoring; safe to read and add to from any thread.

    Each `Count` is an attribute: `counters.replays`, `counters.fenced`, ...
    """

    executions: int
    replays: int
    complete_failures: int
    held: int
    completed_late: int
    fenced: int
    restored: int
    release_failures: int
    renew_failures: int
    interrupted: int
    lapsed: int
    taken_over: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        for count in Count:
            setattr(self, count.value, 0)

    def add(self, count: Count) -> None:
        """Add one to `count`."""
        name = _NAMES[count]  # not `count.value`: an enum property, slow on the hot path
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        """Return every count by name."""
        with self._lock:
            return {count.value: getattr(self, count.value) for count in Count}


class Finisher(Generic[StoreT]):
    """What both drivers share: the store, and counting and logging the ends of an execution.

    Args:
        store: the store.
        counters: where to count (default: new counters).
        logger: where to log store failures.
        observation: the face's observers (`retrysafe.observe`); with some, the store's
            primitives are timed and reported.
        raise_fenced: raise `FencedError` from `finish` when the claim was taken over (the
            decorator's caller must learn it, B17), instead of logging it.
    """

    __slots__ = ("counters", "logger", "raise_fenced", "store")

    def __init__(
        self,
        store: StoreT,
        *,
        counters: Counters | None = None,
        logger: logging.Logger = LOGGER,
        observation: Observation | None = None,
        raise_fenced: bool = False,
    ) -> None:
        self.store = observed(store, observation)
        self.counters = counters or Counters()
        self.logger = logger
        self.raise_fenced = raise_fenced
        self._setup()

    def _setup(self) -> None:
        """Set up what a subclass adds; called last by `__init__`."""

    def admitted(self, result: Admission) -> Admission:
        """Count a replay, or warn of a takeover (the face reports the decision, after its own
        refusals)."""
        if result.decision is Decision.REPLAY:
            self.counters.add(Count.REPLAYS)
        elif (claim := result.claim) is not None and claim.taken_over:
            self.counters.add(Count.TAKEN_OVER)
            self.logger.warning(
                "Took over the claim on %s: the lease of the attempt that held it ended "
                "without an outcome stored (its process died or stopped, its renewals failed or "
                "came late, or its release failed). The operation runs again; if the earlier "
                "attempt made its effect, the effect happens twice (B16)",
                named(claim.record.identity),
                extra=fields(claim.record.identity, "taken_over"),
            )
        return result

    def renew_failed(self, identity: Identity, error: Exception) -> bool:
        """Count and log a failed renewal; return whether to keep renewing."""
        if isinstance(error, FencedError):
            self.counters.add(Count.FENCED)
            self.logger.warning(
                "Lost the claim on %s while running: another worker took it over, or the "
                "store lost its record (then storing the outcome claims it again)",
                named(identity),
                extra=fields(identity, "fenced"),
            )
            return False
        self._failed(
            Count.RENEW_FAILURES, "renew_failed", identity, error, "Cannot renew the lease on %s"
        )
        return True

    def complete_failed(self, identity: Identity, error: Exception) -> bool:
        """Count and log an outcome that was not stored (B17, B19); raise a fencing if asked.
        Return whether to hold the outcome and retry (a store error, not a fencing)."""
        if isinstance(error, FencedError):
            self.counters.add(Count.FENCED)
            finish("fenced")
            self.logger.error(
                "The claim on %s was taken over while the operation ran; its outcome was not "
                "stored",
                named(identity),
                extra=fields(identity, "fenced"),
            )
            if self.raise_fenced:
                raise error
            return False
        finish("store_failed")
        if isinstance(error, StoreClosedError):  # no retry can store it: nothing to hold
            self._failed(
                Count.COMPLETE_FAILURES,
                "held_lost",
                identity,
                error,
                "Cannot store the outcome of %s: the store is closed. The key stays in flight "
                "until its lease ends, then a retry may run it again",
            )
            return False
        self._failed(
            Count.COMPLETE_FAILURES,
            "store_failed",
            identity,
            error,
            "Cannot store the outcome of %s; this process holds it and retries until it is "
            "stored (duplicates here get it meanwhile)",
        )
        return True

    def reclaimed(self, target: Claimed, claim: Claim, fenced: FencedError) -> bool:
        """Take `claim`, made for `target` after its completion was fenced (`fenced`); return
        whether `target` must still store its outcome. If it acquired, `target` holds the new
        claim and stores its outcome under it, so that no retry runs the effect again (B19):
        either the record was gone, the store lost it (Redis restarted without persistence, a
        failover to a replica that had not seen it: `restored`), or (`claim.taken_over`)
        another caller had taken the claim over and its lease ended too, its outcome unknown
        (`taken_over`: the operation ran in both). If the record is done
        under `target`'s own token, an earlier completion landed and its reply was lost: it
        is stored. Otherwise another worker owns the key: raise `fenced` (B17)."""
        if not claim.acquired:
            record = claim.record
            if record.state is State.DONE and record.token == target.token:
                return False
            raise fenced
        target.token = claim.token
        if claim.taken_over:
            self.counters.add(Count.TAKEN_OVER)
            self.logger.warning(
                "The claim on %s was taken over while the operation ran (its lease ended "
                "unrenewed), and the lease of the caller that took it ended too, its outcome "
                "unknown: claimed it back to store this outcome. The operation ran in both "
                "(B16, B17)",
                named(target.identity),
                extra=fields(target.identity, "taken_over"),
            )
            return True
        self.counters.add(Count.RESTORED)
        self.logger.warning(
            "The record of %s was gone when its outcome was stored (the store lost it); "
            "claimed it again to store the outcome",
            named(target.identity),
            extra=fields(target.identity, "restored"),
        )
        return True

    def interrupted(self, identity: Identity, error: BaseException) -> None:
        """Count and log an operation interrupted while it ran (see `interrupts`): its claim
        is kept, not released, until its lease ends (B40)."""
        self.counters.add(Count.INTERRUPTED)
        finish("interrupted")
        self.logger.warning(
            "The operation on %s was interrupted while it ran (%s): its outcome is unknown, so "
            "its claim is kept until its lease ends. Until then a retry waits or is refused as "
            "in flight; after it, a retry runs the operation again",
            named(identity),
            type(error).__name__,
            extra=fields(identity, "interrupted"),
        )

    def release_failed(self, identity: Identity, error: Exception) -> None:
        if isinstance(error, FencedError):
            self.logger.debug("The claim on %s was already gone when releasing", named(identity))
            return
        self._failed(
            Count.RELEASE_FAILURES,
            "release_failed",
            identity,
            error,
            "Cannot release the claim on %s; its lease will end",
        )

    def _failed(
        self, count: Count, event: str, identity: Identity, error: Exception, message: str
    ) -> None:
        """Count a store call that failed, and log `message` about `identity` as an error, with
        the traceback of `error` and `event` as the record's `retrysafe_event` (`fields`)."""
        self.counters.add(count)
        self.logger.error(message, named(identity), exc_info=error, extra=fields(identity, event))
