"""The HTTP answer to an admission, and the per-process bookkeeping shared by both faces."""

from __future__ import annotations

import threading

from retrysafe._engine import Decision
from retrysafe._flow import Admission
from retrysafe._http.outcome import replay_response
from retrysafe._http.problems import Response, in_flight, mismatch, problem, scope_missing
from retrysafe._http.scope import NoCaller, ScopeError, Scoper
from retrysafe._http.settings import RequestView, Settings, logger
from retrysafe._record import Identity

__all__ = ["ScopeLimiter", "answer", "new_identity", "unresolved"]


def answer(admitted: Admission, settings: Settings) -> Response | None:
    """Return the response to an admission that does not execute: the replay (B10), the
    mismatch (B13) or the in-flight problem (B14); None to execute."""
    if admitted.decision is Decision.EXECUTE:
        return None
    if admitted.decision is Decision.REPLAY and admitted.record is not None:
        return replay_response(admitted.record, settings)
    if admitted.decision is Decision.MISMATCH:
        return mismatch(settings)
    return in_flight(settings)


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


def new_identity(
    settings: Settings, request: RequestView, key: str, scoper: Scoper
) -> Identity | Response:
    """Return the record identity of a request with `key`: (namespace, scope, key) (B8), or
    the scope-missing problem when the request has no scope (or `unresolved`'s when its scope
    function's value is not a scope)."""
    try:
        scope = scoper.scope_of(settings, request)
    except ScopeError as error:
        return unresolved(settings, error)
    if scope is None:
        return scope_missing(settings)
    return Identity(settings.namespace, scope, key)


def unresolved(settings: Settings, error: ScopeError | NoCaller) -> Response:
    """Return the problem of a keyed request whose caller cannot be named (B8); nothing ran.
    By the client's fault (`NoCaller`), the 400 scope-missing problem that says why; by a
    fault of the configuration (`ScopeError`), the 500 scope-unresolved one, logged."""
    if isinstance(error, NoCaller):
        return scope_missing(settings, str(error))
    logger.error(
        "A keyed request was refused: %s",
        error,
        exc_info=error if error.__cause__ is not None else None,
        extra={"retrysafe_event": "scope_unresolved"},
    )
    return problem("scope-unresolved", settings, f"{error} Nothing ran.")
