"""What the flow counts and logs when a store call fails: one place for every face."""

from __future__ import annotations

import enum
import logging
import threading

from retrysafe._engine import Decision
from retrysafe._errors import FencedError
from retrysafe._flow.admission import Admission
from retrysafe._record import Identity

__all__ = ["Count", "Counters", "Finisher"]


class Count(enum.StrEnum):
    """What the flow counts."""

    EXECUTIONS = "executions"
    """Operations that ran under a claim."""
    REPLAYS = "replays"
    """Calls answered from a stored outcome."""
    COMPLETE_FAILURES = "complete_failures"
    """Outcomes that could not be stored after the operation ran (B19)."""
    FENCED = "fenced"
    """Claims found taken over by another worker when completing or renewing (B17)."""
    RELEASE_FAILURES = "release_failures"
    """Claims that could not be released (they end with their lease)."""
    RENEW_FAILURES = "renew_failures"
    """Lease renewals that failed (other than fencing)."""


class Counters:
    """Counts of what a face did, for monitoring; safe to read and add to from any thread.

    Each `Count` is an attribute: `counters.replays`, `counters.fenced`, ...
    """

    executions: int
    replays: int
    complete_failures: int
    fenced: int
    release_failures: int
    renew_failures: int

    def __init__(self) -> None:
        self._lock = threading.Lock()
        for count in Count:
            setattr(self, count.value, 0)

    def add(self, count: Count) -> None:
        """Add one to `count`."""
        with self._lock:
            setattr(self, count.value, getattr(self, count.value) + 1)

    def snapshot(self) -> dict[str, int]:
        """Return every count by name."""
        with self._lock:
            return {count.value: getattr(self, count.value) for count in Count}


class Finisher:
    """What both drivers share: counting and logging the ends of an execution."""

    __slots__ = ("counters", "logger", "raise_fenced")

    def __init__(self, counters: Counters, logger: logging.Logger, raise_fenced: bool) -> None:
        self.counters = counters
        self.logger = logger
        self.raise_fenced = raise_fenced

    def admitted(self, result: Admission) -> Admission:
        if result.decision is Decision.REPLAY:
            self.counters.add(Count.REPLAYS)
        return result

    def renew_failed(self, identity: Identity, error: Exception) -> bool:
        """Count and log a failed renewal; return whether to keep renewing."""
        if isinstance(error, FencedError):
            self.counters.add(Count.FENCED)
            self.logger.warning("Lost the claim on %s to another worker while running", identity)
            return False
        self.counters.add(Count.RENEW_FAILURES)
        self.logger.error("Cannot renew the lease on %s", identity, exc_info=error)
        return True

    def complete_failed(self, identity: Identity, error: Exception) -> None:
        """Count and log an outcome that was not stored (B17, B19); raise a fencing if asked."""
        if isinstance(error, FencedError):
            self.counters.add(Count.FENCED)
            self.logger.error(
                "The claim on %s was taken over while the operation ran; its outcome was not "
                "stored",
                identity,
            )
            if self.raise_fenced:
                raise error
            return
        self.counters.add(Count.COMPLETE_FAILURES)
        self.logger.error(
            "Cannot store the outcome of %s; it stays in flight until its lease ends",
            identity,
            exc_info=error,
        )

    def release_failed(self, identity: Identity, error: Exception) -> None:
        if isinstance(error, FencedError):
            self.logger.debug("The claim on %s was already gone when releasing", identity)
            return
        self.counters.add(Count.RELEASE_FAILURES)
        self.logger.error(
            "Cannot release the claim on %s; its lease will end", identity, exc_info=error
        )
