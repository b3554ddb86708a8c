"""The claim step and the per-process bookkeeping shared by both faces."""

from __future__ import annotations

import threading

from retrysafe._engine import Decision, decide
from retrysafe._http.settings import RequestView, Settings
from retrysafe._record import Claim, Identity

__all__ = ["CLAIM_RETRIES", "HttpCounters", "ScopeLimiter", "new_identity", "verdict"]

CLAIM_RETRIES = 3
"""How often a face claims again when the record expired between the store's answer and now."""


def verdict(claim: Claim, fingerprint: str, now: float) -> Decision:
    """Return what to do after `claim`: the engine's decision on the record it returned."""
    if claim.acquired:
        return Decision.EXECUTE
    return decide(claim.record, fingerprint, now)


class HttpCounters:
    """Counts of what the middleware did, for monitoring; safe to read at any time."""

    __slots__ = (
        "_lock",
        "complete_failures",
        "executions",
        "fenced",
        "release_failures",
        "renew_failures",
        "replays",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executions = 0
        """Requests that ran the handler under a claim."""
        self.replays = 0
        """Requests answered from a stored outcome."""
        self.complete_failures = 0
        """Outcomes that could not be stored after the handler ran (B19)."""
        self.fenced = 0
        """Claims found taken over by another worker when completing or renewing (B17)."""
        self.release_failures = 0
        """Claims that could not be released (they expire with their lease)."""
        self.renew_failures = 0
        """Lease renewals that failed (other than fencing)."""

    def add(self, name: str) -> None:
        """Add one to counter `name`."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        """Return every counter by name."""
        with self._lock:
            return {name: getattr(self, name) for name in self.__slots__ if name != "_lock"}


class ScopeLimiter:
    """Caps the keys one scope runs at once in this process (B36); shared by requests.

    Args:
        cap: the most in-flight executions per scope.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, scope: str) -> bool:
        """Take a slot for `scope`; return False (and take none) if it is at its cap."""
        with self._lock:
            running = self._running.get(scope, 0)
            if running >= self._cap:
                return False
            self._running[scope] = running + 1
            return True

    def leave(self, scope: str) -> None:
        """Give back a slot taken by `enter`."""
        with self._lock:
            running = self._running.pop(scope) - 1
            if running:
                self._running[scope] = running


def new_identity(settings: Settings, request: RequestView, key: str) -> Identity:
    """Return the record identity of a request with `key`: (namespace, scope, key) (B8)."""
    return Identity(settings.namespace, settings.scope_of(request), key)
