"""`@idempotent`: run a function once per key and replay its outcome to every retry (B26-B28).

One decorator for both colours of function: a sync function takes a sync store, an async
function an async store. Each call is identified by (namespace, scope, key) and fingerprinted by
its arguments; the store's claim decides whether it runs, replays, waits or is refused, exactly
as for an HTTP request (`retrysafe._engine.decide`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, cast

import anyio

from retrysafe._engine import Decision, decide
from retrysafe._errors import (
    ConfigurationError,
    FencedError,
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    StoreError,
)
from retrysafe._fingerprint import digest
from retrysafe._record import Identity, Record
from retrysafe._serializer import JSONSerializer, Outcomes, Serializer, canonical_bytes
from retrysafe.stores.base import AsyncStore, Store

__all__ = ["DEFAULT_LEASE", "DEFAULT_RETENTION", "DEFAULT_WAIT", "idempotent"]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_RETENTION = 24 * 3600.0
"""How long a finished call's outcome is kept and replayed (B21): 24 hours."""
DEFAULT_LEASE = 30.0
"""How long an in-flight claim lives without a renewal (B16); renewed every third of it."""
DEFAULT_WAIT = 10.0
"""How long a duplicate waits for the first call's outcome before `InFlightError` (B15)."""

logger = logging.getLogger("retrysafe")

KeyFunction = Callable[..., object]


def idempotent(
    store: Store | AsyncStore,
    *,
    key: str | KeyFunction,
    fingerprint: Iterable[str] | KeyFunction | None = None,
    scope: str | KeyFunction = "",
    namespace: str | None = None,
    retention: float = DEFAULT_RETENTION,
    lease: float = DEFAULT_LEASE,
    wait: float = DEFAULT_WAIT,
    final_exceptions: tuple[type[BaseException], ...] = (),
    serializer: Serializer | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Run the decorated function at most once per key; replay its outcome to every repeat.

    Args:
        store: where claims and outcomes live; a sync `Store` for a sync function, an
            `AsyncStore` for an `async def` function.
        key: the name of the argument that holds the key (`key="order_id"`), or a callable
            taking the function's arguments and returning it. A key is a non-empty `str`, an
            `int` or a `UUID`.
        fingerprint: which arguments make the fingerprint: None for all of them (less `self`
            or `cls`), a list of argument names, or a callable taking the function's arguments
            and returning a value (`bytes` are used as they are). The same key with another
            fingerprint raises `KeyMismatchError`.
        scope: a fixed scope, or a callable of the arguments (a tenant); keys from two scopes
            never meet.
        namespace: what separates this function's keys from others'; default
            `module.QualifiedName`. Set it so that renaming the function keeps its keys.
        retention: seconds a finished outcome is kept and replayed.
        lease: seconds an in-flight claim lives unless renewed; a heartbeat renews it every
            third of it while the call runs, so a slow live call is never run twice.
        wait: seconds a duplicate call waits for the first one's outcome; 0 raises
            `InFlightError` at once.
        final_exceptions: exception types stored as the outcome and raised again on replay;
            any other exception releases the key so a retry runs again (B28).
        serializer: how return values are stored; default `JSONSerializer()`.
    """
    if lease <= 0 or retention <= 0 or wait < 0:
        raise ConfigurationError("lease and retention must be positive and wait not negative.")
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in final_exceptions):
        raise ConfigurationError("final_exceptions must be a tuple of exception classes.")
    if namespace is not None and not namespace:
        raise ConfigurationError("namespace must not be empty.")
    serializer = serializer if serializer is not None else JSONSerializer()
    if not isinstance(serializer, Serializer):
        raise ConfigurationError("serializer must have dumps(value) and loads(data) methods.")

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        namespace_ = namespace or f"{func.__module__}.{func.__qualname__}"
        plan = _Plan(
            store=store,
            namespace=namespace_,
            signature=inspect.signature(func),
            key=_argument_getter(func, key, "key"),
            fingerprint=_fingerprint_getter(func, fingerprint),
            scope=scope if callable(scope) else str(scope),
            retention=retention,
            lease=lease,
            wait=wait,
            final_exceptions=final_exceptions,
            outcomes=Outcomes(serializer, final_exceptions, namespace_),
        )
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise ConfigurationError(
                f"@idempotent cannot decorate the generator {func.__qualname__}: "
                "return a value instead."
            )
        store_is_async = inspect.iscoroutinefunction(getattr(store, "claim", None))
        if inspect.iscoroutinefunction(func):
            if not store_is_async:
                raise ConfigurationError(
                    f"{func.__qualname__} is async, so @idempotent needs an async store "
                    "(open_async_store), not a sync one."
                )

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await _call_async(plan, func, args, kwargs)

            return cast(Callable[P, T], async_wrapper)
        if store_is_async:
            raise ConfigurationError(
                f"{func.__qualname__} is sync, so @idempotent needs a sync store "
                "(open_store), not an async one."
            )

        @functools.wraps(func)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return cast(T, _call_sync(plan, func, args, kwargs))

        return sync_wrapper

    return decorate


def _argument_getter(func: Callable[..., object], spec: str | KeyFunction, what: str) -> Any:
    """Return `spec` if callable, else check that `func` has an argument named `spec`."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec not in inspect.signature(func).parameters:
        raise ConfigurationError(f"{what}={spec!r}: {func.__qualname__} has no such argument.")
    return spec


def _fingerprint_getter(
    func: Callable[..., object], spec: Iterable[str] | KeyFunction | None
) -> KeyFunction | tuple[str, ...]:
    if callable(spec):
        return spec
    parameters = list(inspect.signature(func).parameters)
    if spec is None:
        if parameters and parameters[0] in ("self", "cls"):
            parameters = parameters[1:]  # a method's instance is not part of the request
        return tuple(parameters)
    names = (spec,) if isinstance(spec, str) else tuple(spec)
    for name in names:
        _argument_getter(func, name, "fingerprint")
    return names


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """Everything one decorated function needs per call, fixed at decoration time."""

    store: Any
    namespace: str
    signature: inspect.Signature
    key: str | KeyFunction
    fingerprint: KeyFunction | tuple[str, ...]
    scope: str | KeyFunction
    retention: float
    lease: float
    wait: float
    final_exceptions: tuple[type[BaseException], ...]
    outcomes: Outcomes

    def identify(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Identity, str]:
        """Return the call's identity and fingerprint, from its arguments alone."""
        arguments: dict[str, Any] = {}
        if isinstance(self.key, str) or isinstance(self.fingerprint, tuple):
            bound = self.signature.bind(*args, **kwargs)  # a bad call fails here, unclaimed
            bound.apply_defaults()
            arguments = bound.arguments
        raw_key = arguments[self.key] if isinstance(self.key, str) else self.key(*args, **kwargs)
        scope = self.scope if isinstance(self.scope, str) else self.scope(*args, **kwargs)
        identity = Identity(self.namespace, str(scope), _key_text(raw_key))
        if isinstance(self.fingerprint, tuple):
            chosen: object = {name: arguments[name] for name in self.fingerprint}
        else:
            chosen = self.fingerprint(*args, **kwargs)
        if isinstance(chosen, bytes):
            return identity, digest((chosen,))
        try:
            return identity, digest((canonical_bytes(chosen),))
        except (TypeError, ValueError, RecursionError) as error:
            raise ConfigurationError(
                f"The arguments of {self.namespace} cannot be fingerprinted ({error}). Choose "
                "the arguments that make the request with fingerprint=[...] or a callable."
            ) from error

    def is_final(self, error: BaseException) -> bool:
        """Return whether `error` is stored as the outcome rather than releasing the key."""
        return isinstance(error, self.final_exceptions)

    def next_step(
        self, record: Record, fingerprint: str, now: float, deadline: float
    ) -> Decision | float:
        """Return what a call that did not acquire its claim does next.

        `Decision.REPLAY`: replay `record`. `Decision.EXECUTE`: claim again (the lease or the
        retention ended meanwhile). A number: wait that many seconds for the running call.
        Raises `KeyMismatchError`, or `InFlightError` once the wait is over.
        """
        decision = decide(record, fingerprint, now)
        if decision is Decision.MISMATCH:
            raise KeyMismatchError(
                f"The key {record.identity.key!r} of {self.namespace} was already used with "
                "different arguments."
            )
        if decision is not Decision.IN_FLIGHT:
            return decision
        remaining = deadline - time.monotonic()
        if remaining > 0:
            return remaining
        raise InFlightError(
            f"A call of {self.namespace} with the key {record.identity.key!r} is still running.",
            retry_after=min(self.lease, max(0.1, record.lease_expires_at - now)),
        )


def _key_text(raw: object) -> str:
    if isinstance(raw, str) and raw:
        return raw
    if isinstance(raw, int | uuid.UUID) and not isinstance(raw, bool):
        return str(raw)
    raise InvalidKeyError(
        f"An idempotency key must be a non-empty str, an int or a UUID, not {raw!r}."
    )


# -- sync -------------------------------------------------------------------------------------


def _call_sync(
    plan: _Plan, func: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    identity, fingerprint = plan.identify(args, kwargs)
    store: Store = plan.store
    deadline = time.monotonic() + plan.wait
    while True:
        claim = store.claim(identity, fingerprint, lease=plan.lease, retention=plan.retention)
        if claim.acquired:
            return _execute_sync(plan, identity, claim.token, func=func, args=args, kwargs=kwargs)
        record: Record | None = claim.record
        while record is not None:
            step = plan.next_step(record, fingerprint, store.clock.now(), deadline)
            if isinstance(step, Decision):
                if step is Decision.REPLAY:
                    return plan.outcomes.replay(record.outcome or b"")
                break  # EXECUTE: claim again
            record = store.wait(identity, timeout=step)


def _execute_sync(
    plan: _Plan,
    identity: Identity,
    token: str,
    *,
    func: Callable[..., object],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> object:
    store: Store = plan.store
    beat = _HEARTBEATS.start(store, identity, token, plan.lease)
    try:
        value = func(*args, **kwargs)
    except BaseException as error:
        _HEARTBEATS.stop(beat)
        if plan.is_final(error):
            _finish_sync(store, identity, token, plan.outcomes.raised(error), plan)
        else:
            _release_sync(store, identity, token)
        raise
    _HEARTBEATS.stop(beat)
    outcome, problem = plan.outcomes.returned(value)
    _finish_sync(store, identity, token, outcome, plan)
    if problem is not None:
        raise problem
    return value


def _finish_sync(store: Store, identity: Identity, token: str, outcome: bytes, plan: _Plan) -> None:
    try:
        store.complete(identity, token, outcome, retention=plan.retention)
    except FencedError:
        raise  # B17: another caller took the key over; its outcome stands
    except StoreError:
        # B19: the effect happened; the caller gets its result, the key stays in flight until
        # its lease ends, and it never silently becomes "not found".
        logger.exception("retrysafe: could not store the outcome of %s", plan.namespace)


def _release_sync(store: Store, identity: Identity, token: str) -> None:
    try:
        store.release(identity, token)
    except (FencedError, StoreError):
        logger.warning("retrysafe: could not release %r; its lease will expire", identity.key)


@dataclasses.dataclass(eq=False, slots=True)
class _Beat:
    """One in-flight sync claim whose lease the heartbeat thread renews."""

    store: Store
    identity: Identity
    token: str
    lease: float
    due: float


class _Heartbeats:
    """One daemon thread that renews the lease of every running sync call (B16).

    A thread per call would cost more than a short call itself. This one sleeps until the next
    renewal is due, and never longer than the shortest renewal interval seen (the tick), so a
    new claim, due at least a tick from now, needs no wake-up: a call costs a dict insert and a
    delete, not a context switch.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._beats: dict[int, _Beat] = {}
        self._thread: threading.Thread | None = None
        self._tick = float("inf")
        self._next_wake = float("inf")

    def start(self, store: Store, identity: Identity, token: str, lease: float) -> _Beat:
        """Start renewing a claim's lease every third of `lease`."""
        interval = lease / 3
        beat = _Beat(store, identity, token, lease, time.monotonic() + interval)
        with self._cond:
            self._beats[id(beat)] = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="retrysafe-heartbeat", daemon=True
                )
                self._thread.start()
            if interval < self._tick:
                self._tick = interval
                self._cond.notify()
            elif beat.due < self._next_wake:
                self._cond.notify()
        return beat

    def stop(self, beat: _Beat) -> None:
        """Stop renewing `beat`."""
        with self._cond:
            self._beats.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [b for b in self._beats.values() if b.due <= now]
                if not due:
                    earliest = min((b.due for b in self._beats.values()), default=float("inf"))
                    self._next_wake = min(earliest, now + self._tick)
                    timeout = self._next_wake - now
                    self._cond.wait(None if timeout == float("inf") else timeout)
                    continue
            for beat in due:
                self._renew(beat)

    def _renew(self, beat: _Beat) -> None:
        try:
            beat.store.renew(beat.identity, beat.token, lease=beat.lease)
        except FencedError:
            self.stop(beat)  # taken over or finished; completing will say so
            return
        except Exception:
            logger.warning("retrysafe: could not renew the lease of %r", beat.identity.key)
        beat.due = time.monotonic() + beat.lease / 3

    def after_fork(self) -> None:
        """Forget the parent's thread and claims in a forked child."""
        self._cond = threading.Condition()
        self._beats = {}
        self._thread = None
        self._tick = float("inf")
        self._next_wake = float("inf")


_HEARTBEATS = _Heartbeats()
os.register_at_fork(after_in_child=_HEARTBEATS.after_fork)


# -- async ------------------------------------------------------------------------------------


async def _call_async(
    plan: _Plan, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    identity, fingerprint = plan.identify(args, kwargs)
    store: AsyncStore = plan.store
    deadline = time.monotonic() + plan.wait
    while True:
        claim = await store.claim(identity, fingerprint, lease=plan.lease, retention=plan.retention)
        if claim.acquired:
            return await _execute_async(
                plan, identity, claim.token, func=func, args=args, kwargs=kwargs
            )
        record: Record | None = claim.record
        while record is not None:
            step = plan.next_step(record, fingerprint, store.clock.now(), deadline)
            if isinstance(step, Decision):
                if step is Decision.REPLAY:
                    return plan.outcomes.replay(record.outcome or b"")
                break  # EXECUTE: claim again
            record = await store.wait(identity, timeout=step)


async def _execute_async(
    plan: _Plan,
    identity: Identity,
    token: str,
    *,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> object:
    store: AsyncStore = plan.store
    beat = asyncio.get_running_loop().create_task(
        _heartbeat(store, identity, token, plan.lease), name="retrysafe-heartbeat"
    )
    try:
        value = await func(*args, **kwargs)
    except BaseException as error:
        beat.cancel()
        # Shielded: a cancelled caller must still release or store, or the key would wait
        # for its lease to end.
        with anyio.CancelScope(shield=True):
            if plan.is_final(error):
                await _finish_async(store, identity, token, plan.outcomes.raised(error), plan)
            else:
                await _release_async(store, identity, token)
        raise
    beat.cancel()
    outcome, problem = plan.outcomes.returned(value)
    with anyio.CancelScope(shield=True):
        await _finish_async(store, identity, token, outcome, plan)
    if problem is not None:
        raise problem
    return value


async def _heartbeat(store: AsyncStore, identity: Identity, token: str, lease: float) -> None:
    """Renew the lease every third of it until cancelled or fenced (B16)."""
    while True:
        await anyio.sleep(lease / 3)
        try:
            await store.renew(identity, token, lease=lease)
        except FencedError:
            return
        except Exception:
            logger.warning("retrysafe: could not renew the lease of %r", identity.key)


async def _finish_async(
    store: AsyncStore, identity: Identity, token: str, outcome: bytes, plan: _Plan
) -> None:
    try:
        await store.complete(identity, token, outcome, retention=plan.retention)
    except FencedError:
        raise
    except StoreError:
        logger.exception("retrysafe: could not store the outcome of %s", plan.namespace)


async def _release_async(store: AsyncStore, identity: Identity, token: str) -> None:
    try:
        await store.release(identity, token)
    except (FencedError, StoreError):
        logger.warning("retrysafe: could not release %r; its lease will expire", identity.key)
