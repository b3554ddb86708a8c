"""What the transactional ASGI middleware and the Flask decorator share, without I/O.

Both follow the HTTP middleware's flow (`retrysafe._http`: key parsing, scope, fingerprint,
outcome codec, problems), with one difference: the claim, the handler's writes and the stored
response commit in one database transaction on the handler's own connection, and the response
is sent only after that commit. A failed commit rolls the writes back and answers 503, so the
client retries; the HTTP middleware would answer with the handler's response instead (B19),
which here would announce writes that never committed. A handler that caught a database error
and answered anyway, its transaction aborted (`TransactionAbortedError`), gets neither: nothing
of it was applied and nothing can be stored, and it is the handler's bug, not an outage, so
the answer is a 500 problem (`aborted_problem`), logged at ERROR with the handler's name.

One request's work is a work unit (`_async/work.py`, and its generated sync twin): begin and
claim, run the handler, commit its response with its writes or roll both back.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, TypeVar

import anyio

from retrysafe._clock import Clock
from retrysafe._errors import InFlightError, KeyMismatchError, StoreError
from retrysafe._http import (
    Response,
    ResponseCapture,
    Settings,
    in_flight,
    logger,
    mismatch,
    outcome_to_store,
    problem,
    store_unavailable,
)
from retrysafe._record import Identity, Record
from retrysafe.outbox._messages import Outbox
from retrysafe.transactions._state import ClaimOptions

__all__ = [
    "CLEANUP_SECONDS",
    "HANDLER_RAISED",
    "TRANSACTION_KEY",
    "AsyncShieldCancellation",
    "RequestTransaction",
    "RolledBack",
    "ShieldCancellation",
    "aborted_problem",
    "claim_options",
    "connect_failed",
    "handler_name",
    "outcome_of",
    "refused",
    "tracks",
]

C = TypeVar("C")

TRANSACTION_KEY: Final = "retrysafe.transaction"
HANDLER_RAISED: Final = "retrysafe.handler_raised"
"""Set in the ASGI scope by a face that sees its handler raise (FastAPI's dependency), even
when the framework then answers for it (`HTTPException`): the writes roll back (B18)."""
"""Where the request's `RequestTransaction` is kept: an ASGI scope key, a WSGI environ key."""
_ABORTED_DETAIL: Final = (
    "The request's handler caught a database error inside its transaction and answered "
    "anyway, but the database had aborted the transaction: nothing of the request was "
    "applied, and its response was not sent. This is a server error; the same request fails "
    "the same way until the handler is fixed."
)
CLEANUP_SECONDS: Final = 5.0
"""How long a rollback may take once the request was cancelled."""


@dataclass(frozen=True, slots=True)
class RequestTransaction(Generic[C]):
    """The transaction a handler's writes commit in, together with the request's key.

    Attributes:
        connection: the session or connection to write with (as `connect` made it); its
            transaction commits when the response is ready, before it is sent.
        identity: the key's (namespace, scope, key); None for a request without a key, whose
            writes commit in a plain transaction.
        record: the key's record as claimed; None without a key.
    """

    connection: C
    identity: Identity | None = None
    record: Record | None = None
    _outbox: Outbox | None = None

    @property
    def key(self) -> str | None:
        """The request's idempotency key, if it has one."""
        return None if self.identity is None else self.identity.key

    @property
    def outbox(self) -> Outbox:
        """Messages that commit with the handler's writes (`retrysafe.outbox`); a request
        with a key only, since their ids derive from it."""
        if self._outbox is None:
            raise RuntimeError(
                "This request has no idempotency key, so its messages would have no derived "
                "id: make the route require a key (required=True) to use tx.outbox."
            )
        return self._outbox


class RolledBack(Exception):  # noqa: N818 - a signal to roll back, not an error
    """Passed to a transaction's exit to roll it back without an error of the handler."""


def tracks(settings: Settings, method: str, keyed: bool) -> bool:
    """Return whether a request to a covered route claims its key: a covered method, with a
    key or where one is required (B5, B6); the others still run in a plain transaction."""
    return method in settings.methods and (keyed or settings.required)


def claim_options(
    settings: Settings, clock: Clock | None, identity: Identity | None, fingerprint: str
) -> ClaimOptions | None:
    """Return the claim of a request with the key `identity`, or None for one without a key."""
    if identity is None:
        return None
    return ClaimOptions(
        identity=identity,
        fingerprint=fingerprint,
        lease=settings.lease,
        retention=settings.retention,
        clock=clock,
    )


def connect_failed(settings: Settings) -> Response:
    """Log why the request's connection could not be opened (the error being handled); return
    the 503 problem that answers the request."""
    logger.exception("Cannot open the database connection for a transactional request")
    return store_unavailable(settings)


def refused(error: Exception, settings: Settings) -> Response | None:
    """Return the problem response for an error of the claim, or None if it is not one."""
    if isinstance(error, KeyMismatchError):
        return mismatch(settings)
    if isinstance(error, InFlightError):
        return in_flight(settings)
    if isinstance(error, StoreError):
        return store_unavailable(settings)
    return None


def aborted_problem(settings: Settings, handler: str) -> Response:
    """Log, at ERROR, that `handler` left its transaction aborted; return the 500 problem that
    answers instead of its response (which claims an outcome that was not committed)."""
    logger.error(
        "The handler %s caught a database error inside its transaction and answered anyway, "
        "but the transaction was aborted: it was rolled back with the key, and the request "
        "answered with a 500 problem instead. Run the statement that may fail in a savepoint "
        "(`with conn.transaction():`, `session.begin_nested()`, `with transaction.atomic():`).",
        handler,
    )
    return problem("transaction-aborted", settings, _ABORTED_DETAIL)


def handler_name(handler: object) -> str:
    """Return the name of a handler (a view, an endpoint, a partial of one) for a log line."""
    while isinstance(handler, functools.partial):
        handler = handler.func
    handler = getattr(handler, "view_class", handler)  # a Django class-based view's class
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    module = getattr(handler, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def outcome_of(response: Response, settings: Settings) -> bytes | None:
    """Return the outcome to store for a complete response, or None to roll back (B18)."""
    capture = ResponseCapture(settings.max_response_size)
    capture.start(response.status, response.headers)
    capture.add(response.body)
    capture.complete = True
    return outcome_to_store(capture, settings)


class AsyncShieldCancellation:
    """Shield a commit or a rollback from the request's cancellation, for at most `seconds`.

    Args:
        seconds: how long the shielded block may take (None: as long as it takes).
    """

    def __init__(self, seconds: float | None = None) -> None:
        self._scope = anyio.move_on_after(seconds, shield=True)

    def __enter__(self) -> None:
        self._scope.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return bool(self._scope.__exit__(exc_type, exc, traceback))


class ShieldCancellation(contextlib.nullcontext[None]):
    """The sync twin of `AsyncShieldCancellation`: a sync call is never cancelled from outside."""

    def __init__(self, seconds: float | None = None) -> None:
        super().__init__()
