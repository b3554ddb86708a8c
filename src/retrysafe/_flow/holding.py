"""Outcomes the store did not take (B19): held in the process until a retry stores them.

When storing an outcome fails with a store error (not a fencing, nor a closed store), the
caller still gets its answer, and the outcome becomes a `Held`: kept in this process, its lease
renewed every third of it, its completion retried with jittered exponential backoff
(`RETRY_FIRST` doubling to `RETRY_CAP`) until it lands, the claim is found fenced (another
worker owns the key), its retention ends, its store is closed, or the process stops. Meanwhile
a duplicate admitted by the same flow gets the held outcome (`Holdings.answer`), without
waiting for the store, and even when the store says the key is in flight under our token.

    Held        the schedule of one held outcome, without I/O or a clock of its own:
                `next_step(now, wall)` says what is due (complete, renew, give up) or how long
                to sleep; the caller reports each step's result
    Holdings    one flow's held outcomes, safe from any thread; `wait_empty` is what a drain
                waits on (B40)
    Holder      what both drivers share: holding an outcome, what each step's result means
                (counted and logged), and draining

Who runs the steps: a sync flow's held outcomes are jobs on one shared daemon thread
(`retrysafe._heartbeat.HOLDER`); an async flow's are tasks on the running event loop (the
async store's connections belong to it), kept referenced by the flow. Only a process that dies
loses a held outcome; then the record waits for its lease to end (B16), and a retry may run the
operation again. At interpreter exit, `exiting.drain_held` drains every sync flow that holds
anything, and logs what is still held as `held_lost` (the holder's thread is a daemon).
"""

from __future__ import annotations

import enum
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from retrysafe._concurrency import monotonic
from retrysafe._engine import Decision, decide
from retrysafe._errors import FencedError, StoreClosedError
from retrysafe._flow.admission import Admission
from retrysafe._flow.counters import Count, Finisher
from retrysafe._flow.exiting import HOLDERS
from retrysafe._flow.observing import fields, named
from retrysafe._record import Claim, Identity, Record, State

__all__ = [
    "DEFAULT_DRAIN",
    "RETRY_CAP",
    "RETRY_FIRST",
    "Held",
    "Holder",
    "Holdings",
    "Step",
]

StoreT = TypeVar("StoreT")

RETRY_FIRST: Final = 0.05
"""Seconds before the first retry of a completion that failed; each retry doubles it."""
RETRY_CAP: Final = 5.0
"""The longest pause between two retries of a held outcome's completion."""
DEFAULT_DRAIN: Final = 10.0
"""How long a drain waits for held outcomes to be stored at shutdown (B40)."""

# The retries' jitter has a generator of its own: the random module's shared one is the
# application's (a seeded simulation, a test's strategies), and retrysafe does not move it.
_JITTER = random.Random()  # noqa: S311 - jitter, not a secret

_forks = [0]  # how many times this process forked: a child forgets its parent's held outcomes
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))


class Step(enum.Enum):
    """What a held outcome's next step does."""

    COMPLETE = "complete"
    RENEW = "renew"
    EXPIRED = "expired"
    """Its retention ended while held: stop (a retry after it is a new request, B21)."""


@dataclass(eq=False)
class Held:
    """One outcome the store did not take, and when to retry storing it and renew its lease.

    `now` is monotonic seconds (the schedule), `wall` the store's clock (records, retention).
    """

    identity: Identity
    token: str
    outcome: bytes
    lease: float
    retention: float
    fingerprint: str | None  # of the claiming request; None if it was not admitted by this flow
    created_at: float
    held_at: float
    renew_at: float
    complete_at: float
    attempts: int = 0  # failed completions so far
    delay: float = RETRY_FIRST
    wake: Callable[[], None] | None = None  # set by the driver while the next step waits

    @classmethod
    def start(
        cls,
        identity: Identity,
        token: str,
        outcome: bytes,
        *,
        lease: float,
        retention: float,
        claimed: Record | None,
        now: float,
        wall: float,
    ) -> Held:
        """Hold `outcome` after its first completion failed at `now`."""
        return cls(
            identity,
            token,
            outcome,
            lease,
            retention,
            fingerprint=None if claimed is None else claimed.fingerprint,
            created_at=wall if claimed is None else claimed.created_at,
            held_at=wall,
            renew_at=now + lease / 3,
            complete_at=now,
        ).failed_completion(now, _JITTER.random())

    def record(self, found: Record | None = None) -> Record | None:
        """Return the record a duplicate is answered from: done, with the held outcome. Its
        fingerprint is that of `found` (the store's in-flight record under our token) if given,
        else the claim's as admitted; None if neither is known."""
        fingerprint = self.fingerprint if found is None else found.fingerprint
        if fingerprint is None:
            return None
        return Record(
            identity=self.identity,
            fingerprint=fingerprint,
            state=State.DONE,
            token=self.token,
            created_at=self.created_at,
            lease_expires_at=self.held_at,
            expires_at=self.held_at + self.retention,
            outcome=self.outcome,
        )

    def next_step(self, now: float, wall: float) -> Step | float:
        """Return the step due now (a completion first), or the seconds until one is."""
        if wall >= self.held_at + self.retention:
            return Step.EXPIRED
        if now >= self.complete_at:
            return Step.COMPLETE
        if now >= self.renew_at:
            return Step.RENEW
        return min(self.complete_at, self.renew_at) - now

    def renewed(self, now: float) -> None:
        """The lease was renewed: the store answers again, so try the completion at once."""
        self.renew_at = now + self.lease / 3
        self.complete_at = now

    def failed_renewal(self, now: float) -> None:
        """A renewal failed: renew again a third of the lease later."""
        self.renew_at = now + self.lease / 3

    def failed_completion(self, now: float, jitter: float) -> Held:
        """A completion failed: retry after half to all of the current delay (`jitter` in
        [0, 1) picks where), which then doubles up to `RETRY_CAP`."""
        self.attempts += 1
        self.complete_at = now + self.delay * (1 + jitter) / 2
        self.delay = min(self.delay * 2, RETRY_CAP)
        return self

    def nudge(self, now: float) -> None:
        """Make the completion due now, and wake the step waiting for it (a drain)."""
        self.complete_at = min(self.complete_at, now)
        if self.wake is not None:
            self.wake()


class Holdings:
    """One flow's held outcomes by identity, and the claims it admitted; safe from any thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[Identity, Held] = {}
        self._forks = _forks[0]

    def _check_fork(self) -> None:
        if self._forks != _forks[0]:  # a forked child: the parent holds (and retries) these
            self._cond = threading.Condition()
            self._held, self._forks = {}, _forks[0]

    def held_any(self) -> bool:
        """Return whether any outcome is held (no lock: a dict's emptiness is read at once)."""
        if not self._held:  # the common case; a forked child holds nothing of its parent's
            return False
        self._check_fork()
        return bool(self._held)

    def holds_for(self, identity: Identity) -> bool:
        """Return whether an outcome is held for `identity`."""
        return self.held_any() and identity in self._held

    def __len__(self) -> int:
        """Return how many outcomes are held."""
        self._check_fork()
        with self._cond:
            return len(self._held)

    def all(self) -> list[Held]:
        """Return the held outcomes."""
        self._check_fork()
        with self._cond:
            return list(self._held.values())

    def add(self, held: Held) -> None:
        """Hold `held` (instead of an older outcome of the same identity, if any)."""
        self._check_fork()
        with self._cond:
            self._held[held.identity] = held

    def holds(self, held: Held) -> bool:
        """Return whether `held` is still held."""
        with self._cond:
            return self._held.get(held.identity) is held

    def drop(self, held: Held) -> None:
        """Stop holding `held` (stored, fenced or given up)."""
        with self._cond:
            if self._held.get(held.identity) is held:
                del self._held[held.identity]
                self._cond.notify_all()

    def wait_empty(self, timeout: float) -> int:
        """Wait up to `timeout` seconds until nothing is held; return how many are left."""
        self._check_fork()
        with self._cond:
            self._cond.wait_for(lambda: not self._held, max(timeout, 0.0))
            return len(self._held)

    def answer(self, identity: Identity, fingerprint: str, now: float) -> Admission | None:
        """Return the admission a held outcome decides for a duplicate, or None to ask the store
        (before the store is asked, or when it fails to answer)."""
        return self._answer(identity, fingerprint, now, None)

    def answer_over(
        self, identity: Identity, fingerprint: str, now: float, found: Claim | Record | None
    ) -> Admission | None:
        """Like `answer`, given the store's answer `found`: a held outcome wins only where the
        store says the key is in flight under our token; anything else (done, taken over,
        absent) is the store's to decide."""
        if isinstance(found, Claim):
            found = None if found.acquired else found.record
        if found is None or found.state is not State.IN_FLIGHT:
            return None
        return self._answer(identity, fingerprint, now, found)

    def _answer(
        self, identity: Identity, fingerprint: str, now: float, found: Record | None
    ) -> Admission | None:
        self._check_fork()
        if not self._held:  # nothing held: the common case, without the lock
            return None
        with self._cond:
            held = self._held.get(identity)
        if held is None or (found is not None and found.token != held.token):
            return None
        replayed = held.record(found)
        if replayed is None:
            return None
        decision = decide(replayed, fingerprint, now)
        return None if decision is Decision.EXECUTE else Admission(decision, record=replayed)


class Holder(Finisher[StoreT]):
    """What both drivers share about held outcomes: holding one, the meaning of each step's
    result, and draining (arguments: see `Finisher`)."""

    __slots__ = ("__weakref__", "drain_timeout", "holdings")

    def _setup(self) -> None:
        super()._setup()
        self.holdings = Holdings()
        """The outcomes this flow holds (B19); `len(flow.holdings)` counts them."""
        self.drain_timeout = DEFAULT_DRAIN
        """How long the ASGI lifespan shutdown waits for held outcomes (B40)."""

    def hold(self, held: Held) -> Held:
        """Hold `held`: count it; the driver then runs its steps."""
        self.holdings.add(held)
        self.counters.add(Count.HELD)
        HOLDERS.add(self)
        return held

    def stepped(self, held: Held, step: Step, error: Exception | None) -> bool:
        """Apply a step's result to `held`, count and log it; return whether to keep going."""
        now = monotonic()
        if step is Step.EXPIRED:
            self.logger.error(
                "The retention of the held outcome of %s ended before it could be stored; dropped",
                named(held.identity),
                extra=fields(held.identity, "held_expired"),
            )
        elif error is None and step is Step.COMPLETE:
            self.counters.add(Count.COMPLETED_LATE)
            self.logger.warning(
                "Stored the held outcome of %s after %d attempts",
                named(held.identity),
                held.attempts + 1,
                extra=fields(held.identity, "completed_late"),
            )
        elif error is None:
            held.renewed(now)
            return True
        elif isinstance(error, FencedError):
            self.counters.add(Count.FENCED)
            self.logger.error(
                "The claim on %s was taken over while its outcome was held; another worker "
                "owns the key, so the held outcome is dropped",
                named(held.identity),
                extra=fields(held.identity, "fenced"),
            )
        elif isinstance(error, StoreClosedError):  # no later try can store it
            self.logger.error(
                "The store of the held outcome of %s was closed before it could be stored; "
                "the key stays in flight until its lease ends, then a retry may run it again",
                named(held.identity),
                extra=fields(held.identity, "held_lost"),
            )
        elif step is Step.RENEW:
            self.counters.add(Count.RENEW_FAILURES)
            self.logger.debug(
                "Cannot renew the lease of the held outcome of %s: %s", named(held.identity), error
            )
            held.failed_renewal(now)
            return True
        else:
            self.counters.add(Count.COMPLETE_FAILURES)
            held.failed_completion(now, _JITTER.random())
            if held.attempts & (held.attempts - 1) == 0:  # attempts 2, 4, 8...: not every one
                self.logger.warning(
                    "Still cannot store the held outcome of %s (%d attempts): %s",
                    named(held.identity),
                    held.attempts,
                    error,
                    extra=fields(held.identity, "store_failed"),
                )
            return True
        self.holdings.drop(held)
        return False

    def lost(self, held: Held) -> None:
        """Log a held outcome given up unstored (its loop closed); the lease decides (B16)."""
        if self.holdings.holds(held):
            self.holdings.drop(held)
            self.logger.error(
                "The held outcome of %s was never stored; the key stays in flight until its "
                "lease ends, then a retry may run it again",
                named(held.identity),
                extra=fields(held.identity, "held_lost"),
            )

    def nudge_all(self) -> None:
        """Make every held outcome's completion due now."""
        now = monotonic()
        for held in self.holdings.all():
            held.nudge(now)

    def drained(self, left: int) -> bool:
        """Log what a drain left held; return whether nothing is."""
        if left:
            self.logger.error(
                "%d held outcomes are still not stored after draining; nothing is released: "
                "each key stays in flight until its lease ends",
                left,
            )
        return not left
