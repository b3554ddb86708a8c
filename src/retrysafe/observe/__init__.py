"""What retrysafe did, for monitoring: one small observer interface that every face calls.

    from retrysafe.asgi import IdempotencyMiddleware
    from retrysafe.observe.prometheus import PrometheusObserver

    app = IdempotencyMiddleware(app, store=store, observers=[PrometheusObserver()])

Each tracked operation (an HTTP request with a key, a decorated call, a consumed message, a
transactional request) is an `Operation`. Its face calls the observers as it goes:
`started`, then `decided` once the operation's fate is known (see `DECISIONS`), `store_call`
for each store primitive the flow runs (and `waited` for the wait for a duplicate in flight),
`finished` when an executed operation's outcome is stored or its claim released (see
`RESULTS`), and `ended` last (`suspended` and `resumed` in between for a WSGI body sent after
its face returned). The client's attempts are reported to `attempted`.

Built in: `retrysafe.observe.prometheus.PrometheusObserver` (extra `[prometheus]`),
`retrysafe.observe.otel.OpenTelemetryObserver` (extra `[otel]`), and structured log records on
the `retrysafe.decisions` logger, emitted whenever it is enabled for DEBUG (see
docs/observability.md). Observers are called inline, on the request's thread or task: they must
be quick and must not block; an exception they raise is logged and otherwise ignored.

An operation's `scope` is never the stored scope itself: it is a short digest
(`scope_digest`), enough to tell two callers apart in a log line. It is unkeyed, so it hides
only a scope that cannot be guessed: the HTTP middleware's scopes are a keyed hash already
(B8), but a decorator's, a consumer's or a transaction's scope given as plain text (a tenant
id, an email) is recovered by hashing a list of candidates. Keys are given as the client sent
them: they name the operation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias

__all__ = [
    "DECISIONS",
    "FACES",
    "RESULTS",
    "Attempt",
    "Decision",
    "Face",
    "Observer",
    "Operation",
    "Result",
    "StoreCall",
    "scope_digest",
]

Face: TypeAlias = Literal["asgi", "wsgi", "decorator", "consumer", "transaction", "proxy"]
FACES: Final = ("asgi", "wsgi", "decorator", "consumer", "transaction", "proxy")
"""Where an operation came in."""

Decision: TypeAlias = Literal[
    "execute", "replay", "mismatch", "in_flight", "invalid", "unavailable", "too_large", "rejected"
]
DECISIONS: Final = (
    "execute",
    "replay",
    "mismatch",
    "in_flight",
    "invalid",
    "unavailable",
    "too_large",
    "rejected",
)
"""What was decided: run it (`execute`); answer from the stored outcome (`replay`); refuse a
reused key with another request (`mismatch`) or one still running (`in_flight`, after any wait);
refuse a malformed key (`invalid`), a store that failed (`unavailable`, fail closed), a body
over the limit (`too_large`), or a request refused for its caller: a required key or a scope
missing, or the caller over its in-flight cap (`rejected`)."""

Result: TypeAlias = Literal["stored", "released", "fenced", "store_failed", "interrupted"]
RESULTS: Final = ("stored", "released", "fenced", "store_failed", "interrupted")
"""How an executed operation ended: its outcome `stored`; its claim `released` (an error, or
an outcome the policy does not keep, so a retry runs again); `fenced` (another worker took the
claim over, B17); `store_failed` (the outcome is held in this process and retried, B19);
`interrupted` (cancelled while it ran, its outcome unknown: the claim is kept until its lease
ends, B40)."""


def scope_digest(scope: str) -> str:
    """Return the short form of a stored scope that observers see: the first 16 hex digits of
    its SHA-256, unkeyed ("" for the empty scope, a decorator's default).

    The same scope has the same digest in every process, so logs, spans and recorded events
    line up. It cannot be reversed, but it can be checked: whoever reads it and can guess the
    scope (a tenant id, an email from a list) confirms the guess by hashing it. The HTTP
    middleware's scopes are a keyed hash already (B8); give other faces a scope that names no
    one if their observers' output must not (see docs/observability.md).
    """
    if not scope:
        return ""
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(eq=False, slots=True)
class Operation:
    """One tracked operation, as observers see it; filled in as it goes.

    Attributes:
        face: where it came in (`FACES`).
        namespace, key: what it is, once known ("" before, or for a request refused before
            its key was read).
        scope: `scope_digest` of its scope, once known (computed when first read).
        decision: what was decided (`DECISIONS`), once decided.
        result: how an executed operation ended (`RESULTS`), once finished.
        start_time_ns: when it started, as `time.time_ns()` (for traces).
        seconds: how long it took, once ended.
        state: for observers' own per-operation things (a span), by any key they choose.
    """

    face: str
    namespace: str = ""
    key: str = ""
    decision: str | None = None
    result: str | None = None
    start_time_ns: int = field(default_factory=time.time_ns)
    started: float = field(default_factory=time.perf_counter)
    seconds: float | None = None
    state: dict[object, object] = field(default_factory=dict)
    _scope: str | None = None  # the stored scope, digested when `scope` is first read
    _digest: str | None = None

    @property
    def scope(self) -> str:
        """`scope_digest` of the operation's scope ("" until known)."""
        if self._digest is None:
            if self._scope is None:
                return ""
            self._digest = scope_digest(self._scope)
        return self._digest

    @scope.setter
    def scope(self, stored_scope: str) -> None:
        """Set the operation's scope, as stored (observers see only its digest)."""
        self._scope, self._digest = stored_scope, None


@dataclass(frozen=True, slots=True)
class StoreCall:
    """One store primitive the flow ran: `name` (claim, complete, release, renew, get, wait,
    checkpoint), when it started (`time.time_ns()`), how long it took, and the error it
    raised, if any."""

    name: str
    start_time_ns: int
    seconds: float
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One request the client sent (B31-B33).

    Attributes:
        method: the request method.
        key: the Idempotency-Key it carried ("" for a method the client does not key).
        number: 1 for the first attempt, 2 for the first retry, ...
        status: the response status, or None when the attempt failed without one.
        error: the exception's class name when it failed without a response.
        seconds: how long the attempt took.
        retry_in: the delay before the next attempt, or None when this one is the last.
    """

    method: str
    key: str
    number: int
    status: int | None
    error: str | None
    seconds: float
    retry_in: float | None


class Observer:
    """Receives what retrysafe does. Every method does nothing: override those you need."""

    def started(self, operation: Operation) -> None:
        """A tracked operation started (its identity is not known yet)."""

    def decided(self, operation: Operation) -> None:
        """Its `decision` is known (and, for most, its namespace, key and scope)."""

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        """A store primitive ran, for `operation` (None: outside one, such as a held outcome's
        retry, B19)."""

    def waited(self, operation: Operation | None, call: StoreCall) -> None:
        """The operation waited for a duplicate in flight (`call.name == "wait"`, B15)."""

    def finished(self, operation: Operation) -> None:
        """An executed operation's `result` is known."""

    def suspended(self, operation: Operation) -> None:
        """Its face handed the rest of it to the server (a WSGI body streamed past the
        storable size, sent after the face returned): undo what `started` made current, so
        the server's thread holds nothing of it. `resumed` and `suspended` then bracket each
        chunk the body makes and its close, on whatever thread the server runs them."""

    def resumed(self, operation: Operation) -> None:
        """A suspended operation goes on for a while (see `suspended`)."""

    def ended(self, operation: Operation) -> None:
        """The operation is over; `seconds` is set."""

    def attempted(self, attempt: Attempt) -> None:
        """The client sent one request (B31-B33)."""
