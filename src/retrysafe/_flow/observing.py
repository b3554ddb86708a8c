"""How the faces and the flow tell observers what they do (`retrysafe.observe`).

A face holds an `Observation` (its name and observers) and brackets each tracked operation with
`start` and `end`; the operation in progress is a context variable, so the flow and the face
report to it from anywhere below (`decide`, `identify`, `finish`) without passing it along.
With no observers and the `retrysafe.decisions` logger not enabled for DEBUG, `start` returns
None (unless another face's operation is current) and every report is one context variable
read. A WSGI body streamed after its face returned keeps its operation until it is exhausted,
fails or is closed (`end_when_sent`); the scope secret's flow reports to no operation
(`unreported`).

The flow's store is wrapped (`observed`) only when there are observers: each primitive is timed
and reported as a `StoreCall`.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from typing import Any, Final, Protocol, TypeVar, cast

from retrysafe._engine import Decision
from retrysafe._record import Identity
from retrysafe.observe import Observer, Operation, StoreCall, scope_digest
from retrysafe.observe._text import printable

__all__ = [
    "DECISIONS_LOGGER",
    "FacedObservers",
    "Observation",
    "Sent",
    "admitted",
    "decide",
    "fields",
    "finish",
    "identify",
    "named",
    "observation_of",
    "observed",
    "unreported",
]

DECISIONS_LOGGER: Final = logging.getLogger("retrysafe.decisions")
"""One record per operation at DEBUG, its fields as `extra` (see docs/observability.md)."""
_LOGGER: Final = logging.getLogger("retrysafe")
_CURRENT: ContextVar[Operation | None] = ContextVar("retrysafe_operation", default=None)
_HUB: Final = object()  # keys of `Operation.state` that are the flow's own
_TOKEN: Final = object()
_ADMITTED: Final = {
    Decision.EXECUTE: "execute",
    Decision.REPLAY: "replay",
    Decision.MISMATCH: "mismatch",
    Decision.IN_FLIGHT: "in_flight",
}
_HOOKS: Final = (
    *("started", "decided", "store_call", "waited", "finished", "ended", "attempted"),
    *("suspended", "resumed"),  # around a body sent after its face returned (`end_when_sent`)
)
_PRIMITIVES: Final = ("claim", "complete", "release", "renew", "get", "wait", "checkpoint")
StoreT = TypeVar("StoreT")


class FacedObservers(tuple[Observer, ...]):
    """Observers, and the face they see: what `idempotent_message` gives `idempotent` (whose
    own face is "decorator")."""

    face: str

    def __new__(cls, observers: Sequence[Observer], *, face: str) -> FacedObservers:
        faced = super().__new__(cls, observers)
        faced.face = face
        return faced


class Observation:
    """The observers of one face: `start` and `end` bracket each of its operations.

    Args:
        face: the face's name (`retrysafe.observe.FACES`).
        observers: who to tell.
    """

    __slots__ = ("_hooks", "face", "observers")

    def __init__(self, face: str, observers: Sequence[Observer] = ()) -> None:
        self.face = face
        self.observers = tuple(observers)
        # Per hook, the observers that override it: a hook nobody overrides costs nothing.
        self._hooks: dict[str, tuple[tuple[Observer, Callable[..., object]], ...]] = {
            hook: tuple(
                (observer, method)
                for observer in self.observers
                if (method := _override(observer, hook)) is not None
            )
            for hook in _HOOKS
        }

    def listens(self, *hooks: str) -> bool:
        """Return whether an observer overrides any of `hooks`."""
        return any(self._hooks[hook] for hook in hooks)

    def __bool__(self) -> bool:
        return bool(self.observers)

    def start(self) -> Operation | None:
        """Start an operation and make it the current one; None when nobody listens and no
        operation is current. Inside another's operation (a decorated call in an observed
        request), one nobody listens to is made current all the same, so that what it reports
        never lands in the other's."""
        if not (self.observers or _CURRENT.get() or DECISIONS_LOGGER.isEnabledFor(logging.DEBUG)):
            return None
        operation = Operation(self.face)
        operation.state[_HUB] = self
        operation.state[_TOKEN] = _CURRENT.set(operation)
        self.tell("started", operation)
        return operation

    def end(self, operation: Operation | None) -> None:
        """End `operation` (None: nothing was started): time it, log it, tell observers."""
        if operation is None:
            return
        operation.seconds = time.perf_counter() - operation.started
        _leave(operation)
        if operation.decision is not None and DECISIONS_LOGGER.isEnabledFor(logging.DEBUG):
            _log(operation)
        self.tell("ended", operation, last_first=True)

    def end_when_sent(self, operation: Operation | None, body: Sent) -> Iterable[bytes]:
        """Return `body`, a response body the server sends after the face returned, whose end
        reports how the operation ended (a WSGI stream stores its outcome then, B22): the
        caller's context and the observers' (`suspended`) are restored now, as a server may
        never close the body; `operation` is resumed only while the body makes a chunk or
        closes, and ends at its end, its failure or its close, whichever comes first."""
        if operation is None:
            return body
        _leave(operation)
        self.tell("suspended", operation, last_first=True)
        return _Sending(self, operation, body)

    def tell(self, hook: str, *args: Any, last_first: bool = False) -> None:
        """Call `hook` on every observer (`last_first`: in reverse, so that observers which
        make a context current at `started` restore them in order at `ended`); an observer
        that raises is logged and skipped."""
        methods = self._hooks[hook]
        for observer, method in reversed(methods) if last_first else methods:
            try:
                method(*args)
            except Exception:
                _LOGGER.exception("The observer %r failed in %s", observer, hook)


def _leave(operation: Operation) -> None:
    """Make the operation's caller's operation current again, if it was not yet."""
    token = cast("Token[Operation | None] | None", operation.state.pop(_TOKEN, None))
    if token is None:
        return
    try:
        _CURRENT.reset(token)
    except ValueError:  # ended in another context than it started in
        _CURRENT.set(None)


class Sent(Protocol):
    """A response body with `close()`, such as `retrysafe._http.wsgi_io.Streamed`."""

    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None: ...


class _Sending:
    """A body sent after its face returned (`Observation.end_when_sent`): its operation is
    current and resumed while it makes a chunk or closes, in any context; it ends once."""

    __slots__ = ("_body", "_observation", "_operation")

    def __init__(self, observation: Observation, operation: Operation, body: Sent) -> None:
        self._observation: Observation | None = observation  # None once ended
        self._operation, self._body = operation, body

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._body)  # a generator: nothing runs before its first chunk
        while True:
            try:
                with self._resumed():
                    chunk = next(chunks, None)
            except BaseException:  # a server that stops here may never call close()
                self._end()
                raise
            if chunk is None:  # sent whole: a bridge that never calls close() is done
                self._end()
                return
            yield chunk

    def close(self) -> None:
        try:
            with self._resumed():
                self._body.close()
        finally:
            self._end()

    @contextmanager
    def _resumed(self) -> Iterator[None]:
        """Make the operation current, and resume its observers unless it ended, meanwhile."""
        observation = _NOBODY if self._observation is None else self._observation
        with _reporting_to(self._operation):
            observation.tell("resumed", self._operation)
            try:
                yield
            finally:
                observation.tell("suspended", self._operation, last_first=True)

    def _end(self) -> None:
        observation, self._observation = self._observation, None
        if observation is not None:  # ended once, however often the server ends it
            observation.end(self._operation)


_NOBODY: Final = Observation("wsgi")  # what an ended `_Sending` tells


@contextmanager
def _reporting_to(operation: Operation | None) -> Iterator[None]:
    """Make `operation` the current one (None: none is) for the duration."""
    token = _CURRENT.set(operation)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def unreported() -> AbstractContextManager[None]:
    """Run a flow that is not the current operation's (the scope secret's, loaded while a
    request is tracked): it names no key and decides nothing of the operation's. Its observed
    store calls are still told, as outside an operation."""
    return _reporting_to(None)


def _override(observer: Observer, hook: str) -> Callable[..., object] | None:
    """Return the observer's `hook`, unless it is `Observer`'s, which does nothing."""
    method = getattr(observer, hook, None)
    if not callable(method) or getattr(method, "__func__", None) is getattr(Observer, hook):
        return None
    return cast("Callable[..., object]", method)


def _current() -> tuple[Operation, Observation] | None:
    operation = _CURRENT.get()
    if operation is None:
        return None
    return operation, cast("Observation", operation.state[_HUB])


def identify(identity: Identity) -> None:
    """Say which (namespace, scope, key) the current operation is about."""
    current = _current()
    if current is not None:
        operation = current[0]
        operation.namespace, operation.key = identity.namespace, identity.key
        operation.scope = identity.scope  # digested when an observer reads it


def decide(decision: str) -> None:
    """Report the current operation's decision (`retrysafe.observe.DECISIONS`)."""
    current = _current()
    if current is not None and current[0].decision is None:
        current[0].decision = decision
        current[1].tell("decided", current[0])


def admitted(decision: Decision) -> None:
    """Report the flow's decision for the current operation: the face calls it once it has
    checked its own refusals (the per-scope cap), which report instead."""
    decide(_ADMITTED[decision])


def finish(result: str) -> None:
    """Report how the current executed operation ended (`retrysafe.observe.RESULTS`); for an
    operation that did not execute (a claim released after a refusal) there is nothing to say."""
    current = _current()
    if current is not None and current[0].result is None and current[0].decision == "execute":
        current[0].result = result
        current[1].tell("finished", current[0])


def named(identity: Identity) -> str:
    """Return how a log message names `identity`: `namespace/key (scope <digest>)`, the key's
    control characters escaped and the scope as its `scope_digest`, never raw (an e-mail)."""
    key = f"{printable(identity.namespace)}/{printable(identity.key)}"
    return f"{key} (scope {scope_digest(identity.scope)})"


def fields(identity: Identity, event: str) -> dict[str, object]:
    """Return the structured fields (`extra`) of a log record about `identity`: the same names
    as the decision records', so one filter finds every line about a key."""
    operation = _CURRENT.get()
    return {
        "face": None if operation is None else operation.face,
        "namespace": identity.namespace,
        "idempotency_key": identity.key,
        "scope": scope_digest(identity.scope),
        "retrysafe_event": event,
    }


def _log(operation: Operation) -> None:
    """Log the operation's decision: its message with the key's control characters written as
    escapes (a key with a line feed must not forge a log line), its fields as they are."""
    milliseconds = round((operation.seconds or 0.0) * 1000, 3)
    DECISIONS_LOGGER.debug(
        "%s %s/%s: %s%s in %.1f ms",
        operation.face,
        printable(operation.namespace or "-"),
        printable(operation.key or "-"),
        operation.decision,
        f", {operation.result}" if operation.result else "",
        milliseconds,
        extra={
            "face": operation.face,
            "namespace": operation.namespace,
            "idempotency_key": operation.key,
            "scope": operation.scope,
            "decision": operation.decision,
            "result": operation.result,
            "duration_ms": milliseconds,
        },
    )


def observed(store: StoreT, observation: Observation | None) -> StoreT:
    """Return `store` with its primitives timed and reported, if an observer listens."""
    if observation is None or not observation.listens("store_call", "waited"):
        return store
    wrapper = _AsyncObserved if inspect.iscoroutinefunction(store.claim) else _SyncObserved  # type: ignore[attr-defined]
    return cast("StoreT", wrapper(store, observation))


def observation_of(store: object) -> Observation | None:
    """Return the observation whose observers `store`'s calls are told (`observed`), or None."""
    return store._observation if isinstance(store, _Observed) else None


class _Observed:
    """A store, each primitive timed and reported; everything else passed through."""

    def __init__(self, store: object, observation: Observation) -> None:
        self._store = store
        self._observation = observation
        for name in _PRIMITIVES:
            if hasattr(store, name):
                setattr(self, name, self._wrap(name, getattr(store, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        raise NotImplementedError

    def _timing(self, name: str) -> _Timing:
        return _Timing(self._observation, name)


class _Timing:
    """Times one store call and reports it when it ends, raising or not."""

    __slots__ = ("_began", "_name", "_observation")

    def __init__(self, observation: Observation, name: str) -> None:
        self._observation, self._name = observation, name
        self._began = time.perf_counter()

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        seconds = time.perf_counter() - self._began
        call = StoreCall(self._name, time.time_ns() - int(seconds * 1e9), seconds, error)
        hook = "waited" if self._name == "wait" else "store_call"
        self._observation.tell(hook, _CURRENT.get(), call)


class _SyncObserved(_Observed):
    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self._timing(name):
                return method(*args, **kwargs)

        return timed


class _AsyncObserved(_Observed):
    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            with self._timing(name):
                return await cast("Awaitable[Any]", method(*args, **kwargs))

        return timed
