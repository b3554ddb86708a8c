"""OpenTelemetry traces of what retrysafe does (extra `[otel]`: opentelemetry-api).

    from retrysafe.observe.otel import OpenTelemetryObserver

    observer = OpenTelemetryObserver()  # the global TracerProvider, as the SDK sets it up
    app = IdempotencyMiddleware(app, store=store, observers=[observer])

The spans, all of kind INTERNAL, from the tracer named "retrysafe":

- `retrysafe.<face>` (`retrysafe.asgi`, `retrysafe.wsgi`, `retrysafe.decorator`,
  `retrysafe.consumer`, `retrysafe.transaction`, `retrysafe.proxy`): one per tracked operation.
  Its parent is the span current when the operation started (the server's or the framework's
  span, or the caller's own around a decorated call), so it joins the caller's trace; while it
  runs it is the current span, so what the handler traces nests under it (a WSGI body streamed
  after its face returned: only while it makes a chunk or closes, never on the server's
  thread in between, `suspended`). Attributes:
  `retrysafe.face`, `retrysafe.namespace`, `retrysafe.key` (the key as the client sent it;
  `record_key=False` leaves it out), `retrysafe.scope` (`retrysafe.observe.scope_digest`, never
  the scope itself), `retrysafe.decision` (`retrysafe.observe.DECISIONS`) and, for an executed
  operation, `retrysafe.result` (`retrysafe.observe.RESULTS`). Its status is ERROR when
  retrysafe itself failed the operation: the store was unavailable (decision `unavailable`),
  the outcome could not be stored (`store_failed`) or the claim was taken over (`fenced`).
  Refusals (`mismatch`, `in_flight`, `invalid`, `too_large`, `rejected`) are the client's
  errors and leave the status unset, as OpenTelemetry's HTTP conventions do for 4xx answers.
- `retrysafe.store.<primitive>` (`claim`, `complete`, `release`, `renew`, `get`,
  `checkpoint`): each store call the operation made, a child of the operation's span with the
  call's own start and end. A call that raised has status ERROR and an exception event.
- `retrysafe.wait`: the wait for a duplicate in flight (B15), likewise.

Store calls made outside any operation (a held outcome's retry, B19; a sync lease renewal,
which runs on the heartbeat thread) become children of the span current where they ran, if
there is one that records; otherwise they are not traced, rather than start traces of their
own (the Prometheus observer and the logs count them). Each client attempt (`attempted`) is an
event `retrysafe.client.attempt` on the current span.

Store spans are reported once the call is over, so a database driver's own instrumentation
(redis, psycopg) shows its spans beside them, under the operation's span, not under them.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Final

from retrysafe._extras import missing_extra

try:
    from opentelemetry import context, trace
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as error:
    raise missing_extra("retrysafe.observe.otel", "otel", error) from error

from retrysafe import __version__
from retrysafe.observe import FACES, Attempt, Observer, Operation, StoreCall

__all__ = ["OpenTelemetryObserver"]

_OPERATION_SPANS: Final = {face: f"retrysafe.{face}" for face in FACES}
_STORE_SPANS: Final = {
    name: f"retrysafe.store.{name}"
    for name in ("claim", "complete", "release", "renew", "get", "checkpoint")
}
_FAILURES: Final = {
    "unavailable": "the idempotency store is unavailable",
    "store_failed": "the outcome was not stored; it is held in this process and retried",
    "fenced": "another worker took the claim over; this outcome was not stored",
}
"""The decisions and results that mark an operation's span as failed, with the description."""


_MADE_CURRENT: ContextVar[bool] = ContextVar("retrysafe_otel_made_current", default=False)
"""Set with each span made current, so that its token tells whether the context that restores
the caller's is the one it was made current in."""


@dataclass(frozen=True, slots=True)
class _Current:
    """An operation's span made current: the context it is in, the caller's, and the tokens."""

    context: Context
    caller: Context
    token: Token[Context]
    mark: Token[bool]

    @classmethod
    def make(cls, span: Span) -> _Current:
        caller = context.get_current()
        made = trace.set_span_in_context(span, caller)
        return cls(made, caller, context.attach(made), _MADE_CURRENT.set(True))

    def restore(self) -> None:
        """Make the caller's context current again. Only the context that made the span
        current can detach its token (else OpenTelemetry logs an error): Django under ASGI
        admits a request in one copy of the context and answers it in another, which holds
        the span, copied back, until the caller's is made current there."""
        try:
            _MADE_CURRENT.reset(self.mark)
        except ValueError:  # another context than the one that made it current
            if context.get_current() is self.context:
                context.attach(self.caller)
            return
        context.detach(self.token)


@dataclass(slots=True)
class _Traced:
    """An operation's span, and while it is current, how to restore the caller's context."""

    span: Span
    current: _Current | None


class OpenTelemetryObserver(Observer):
    """Traces each tracked operation as a span, with its store calls and waits as children.

    Spans are started only through the OpenTelemetry API: without an SDK, or for a trace
    that is not sampled, each hook does next to nothing.

    Args:
        tracer_provider: where the tracer comes from (default: the global one, which
            `opentelemetry.trace.set_tracer_provider` or the OpenTelemetry distro sets up,
            even after this observer was made).
        record_key: put the idempotency key on the operation's span (`retrysafe.key`); leave
            it out if the keys your clients send should not reach your tracing backend. Off,
            a failed store call's exception event carries its type, not its message (which
            may name the key).
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, record_key: bool = True
    ) -> None:
        self.tracer = trace.get_tracer("retrysafe", __version__, tracer_provider)
        self.record_key = record_key

    def started(self, operation: Operation) -> None:
        """Start the operation's span under the current one, and make it current."""
        face = operation.face
        span = self.tracer.start_span(
            _OPERATION_SPANS.get(face) or f"retrysafe.{face}",
            start_time=operation.start_time_ns,
            attributes={"retrysafe.face": face},
        )
        if span.is_recording():  # else the caller's context stays current, untouched
            operation.state[self] = _Traced(span, _Current.make(span))

    def decided(self, operation: Operation) -> None:
        """Put what the operation is about and its decision on its span."""
        span = self._span(operation)
        if span is not None:
            span.set_attributes(self._identity(operation))

    def finished(self, operation: Operation) -> None:
        """Put how the executed operation ended on its span."""
        span = self._span(operation)
        if span is not None and operation.result is not None:
            span.set_attribute("retrysafe.result", operation.result)

    def suspended(self, operation: Operation) -> None:
        """Restore the caller's context: the face returned, the span goes on."""
        traced = operation.state.get(self)
        if isinstance(traced, _Traced) and traced.current is not None:
            current, traced.current = traced.current, None
            current.restore()

    def resumed(self, operation: Operation) -> None:
        """Make the suspended operation's span current again, in the context it goes on in."""
        traced = operation.state.get(self)
        if isinstance(traced, _Traced) and traced.current is None:
            traced.current = _Current.make(traced.span)

    def ended(self, operation: Operation) -> None:
        """Restore the caller's context; end the span, failed if retrysafe failed it."""
        traced = operation.state.pop(self, None)
        if not isinstance(traced, _Traced):
            return
        if traced.current is not None:
            traced.current.restore()
        span = traced.span
        if operation.decision is None:  # identified, perhaps, but never decided
            span.set_attributes(self._identity(operation))
        failure = _FAILURES.get(operation.decision or "") or _FAILURES.get(operation.result or "")
        if failure is not None:
            span.set_status(Status(StatusCode.ERROR, failure))
        end = None
        if operation.seconds is not None:
            end = operation.start_time_ns + int(operation.seconds * 1e9)
        span.end(end_time=end)

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        """Trace a store call, as a child of its operation's span."""
        self._child(operation, _STORE_SPANS.get(call.name) or f"retrysafe.store.{call.name}", call)

    def waited(self, operation: Operation | None, call: StoreCall) -> None:
        """Trace a wait for a duplicate in flight, as a child of its operation's span."""
        self._child(operation, "retrysafe.wait", call)

    def attempted(self, attempt: Attempt) -> None:
        """Add an event for one client attempt to the current span."""
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, AttributeValue] = {
            "http.request.method": attempt.method,
            "retrysafe.client.attempt": attempt.number,
            "retrysafe.client.seconds": attempt.seconds,
        }
        if attempt.key and self.record_key:
            attributes["retrysafe.key"] = attempt.key
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        if attempt.error is not None:
            attributes["error.type"] = attempt.error
        if attempt.retry_in is not None:
            attributes["retrysafe.client.retry_in"] = attempt.retry_in
        span.add_event("retrysafe.client.attempt", attributes)

    def _span(self, operation: Operation) -> Span | None:
        traced = operation.state.get(self)
        return traced.span if isinstance(traced, _Traced) else None

    def _identity(self, operation: Operation) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {}
        if operation.namespace:
            attributes["retrysafe.namespace"] = operation.namespace
        if operation.key and self.record_key:
            attributes["retrysafe.key"] = operation.key
        if operation.scope:
            attributes["retrysafe.scope"] = operation.scope
        if operation.decision is not None:
            attributes["retrysafe.decision"] = operation.decision
        return attributes

    def _child(self, operation: Operation | None, name: str, call: StoreCall) -> None:
        """Record `call` as a span under the operation's span (or, outside one, the current)."""
        parent = self._span(operation) if operation is not None else trace.get_current_span()
        if parent is None or not parent.is_recording():
            return
        span = self.tracer.start_span(
            name, trace.set_span_in_context(parent), start_time=call.start_time_ns
        )
        end = call.start_time_ns + int(call.seconds * 1e9)
        if call.error is not None:
            error = call.error
            span.set_attribute("error.type", _type_name(error))
            if self.record_key:
                span.record_exception(error, timestamp=end)
            else:  # a store's message may name the key (a record that does not open)
                span.add_event("exception", {"exception.type": _type_name(error)}, end)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end(end_time=end)


def _type_name(error: BaseException) -> str:
    """Return the fully qualified name of `error`'s class (`error.type`)."""
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
