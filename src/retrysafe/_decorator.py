"""`@idempotent`: run a function once per key and replay its outcome to every retry (B26-B28).

One decorator for both colours of function: a sync function takes a sync store, an async
function an async store. Each call is identified by (namespace, scope, key) and fingerprinted by
its arguments; the store's claim decides whether it runs, replays, waits or is refused, exactly
as for an HTTP request (`retrysafe._engine.decide`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypedDict, TypeVar, cast

from retrysafe._clock import check_durations
from retrysafe._engine import Decision
from retrysafe._errors import ConfigurationError, InvalidKeyError, StoreError
from retrysafe._fingerprint import fingerprint_value
from retrysafe._flow import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    DEFAULT_WAIT,
    Admission,
    AsyncFlow,
    SyncFlow,
    observing,
)
from retrysafe._flow.executions import interrupts
from retrysafe._flow.observing import Observation, decide
from retrysafe._keys import key_text
from retrysafe._outcomes import Outcomes, is_final
from retrysafe._record import Identity
from retrysafe._serializer import JSONSerializer, Serializer
from retrysafe.observe import Observer
from retrysafe.stores.base import AsyncStore, Store

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "DEFAULT_WAIT",
    "CallOptions",
    "IdempotentOptions",
    "callable_name",
    "default_namespace",
    "idempotent",
    "is_async_callable",
]

P = ParamSpec("P")
T = TypeVar("T")

KeyFunction = Callable[..., object]


class CallOptions(TypedDict, total=False):
    """The options of an idempotent call that every decorator takes: `idempotent`'s, and the
    consumers' (which name the namespace themselves)."""

    scope: str | KeyFunction
    retention: float
    lease: float
    wait: float
    final_exceptions: tuple[type[BaseException], ...]
    serializer: Serializer | None
    observers: Sequence[Observer]


class IdempotentOptions(CallOptions, total=False):
    """The options of `idempotent` besides the store, the key and the fingerprint."""

    namespace: str | None


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
    observers: Sequence[Observer] = (),
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
        observers: who to tell what each call did (`retrysafe.observe`), such as
            `PrometheusObserver()`; their face is "decorator".
    """
    observation = Observation(getattr(observers, "face", "decorator"), observers)
    check_durations(lease, retention, wait)
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in final_exceptions):
        raise ConfigurationError("final_exceptions must be a tuple of exception classes.")
    if namespace is not None and not namespace:
        raise ConfigurationError("namespace must not be empty.")
    serializer = serializer if serializer is not None else JSONSerializer()
    if not isinstance(serializer, Serializer):
        raise ConfigurationError("serializer must have dumps(value) and loads(data) methods.")

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        if isinstance(func, staticmethod | classmethod):  # @idempotent above @staticmethod
            return cast(Callable[P, T], type(func)(decorate(func.__func__)))
        namespace_ = namespace or default_namespace(func)
        store_is_async = inspect.iscoroutinefunction(getattr(store, "claim", None))
        flow = (
            AsyncFlow(cast(AsyncStore, store), raise_fenced=True, observation=observation)
            if store_is_async
            else SyncFlow(cast(Store, store), raise_fenced=True, observation=observation)
        )
        signature = inspect.signature(func)
        plan = _Plan(
            flow=flow,
            observation=observation,
            namespace=namespace_,
            signature=signature,
            positional=_positional_names(signature),
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
                f"@idempotent cannot decorate the generator {callable_name(func)}: "
                "return a value instead."
            )
        if is_async_callable(func):
            if not store_is_async:
                raise ConfigurationError(
                    f"{callable_name(func)} is async, so @idempotent needs an async store "
                    "(open_async_store), not a sync one."
                )

            @functools.wraps(func)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await _call_async(plan, func, args, kwargs)

            return cast(Callable[P, T], async_wrapper)
        if store_is_async:
            raise ConfigurationError(
                f"{callable_name(func)} is sync, so @idempotent needs a sync store "
                "(open_store), not an async one."
            )

        @functools.wraps(func)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return cast(T, _call_sync(plan, func, args, kwargs))

        return sync_wrapper

    return decorate


def is_async_callable(func: object) -> bool:
    """Whether `func` is an `async def` (or a partial of one), or an object whose `__call__` is."""
    call = getattr(func, "__call__", None)  # noqa: B004 - the method itself, not callable()
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


def callable_name(func: object) -> str:
    """Name `func` in a message: its qualified name, or its repr (a partial, an object)."""
    return str(getattr(func, "__qualname__", None) or repr(func))


def default_namespace(func: Callable[..., object]) -> str:
    """Return `module.QualifiedName` for `func`, or refuse one that has no name of its own."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    if not module or not qualname:
        raise ConfigurationError(
            f"{func!r} has no module-qualified name to default the namespace to; pass "
            "namespace='...'."
        )
    if "<lambda>" in qualname:
        raise ConfigurationError(
            f"{module}.{qualname}: every lambda there would share this namespace, and replay "
            "another's outcomes for the same key; pass namespace='...'."
        )
    return f"{module}.{qualname}"


def _argument_getter(func: Callable[..., object], spec: str | KeyFunction, what: str) -> Any:
    """Return `spec` if callable, else check that `func` has an argument named `spec`."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or spec not in inspect.signature(func).parameters:
        raise ConfigurationError(f"{what}={spec!r}: {callable_name(func)} has no such argument.")
    return spec


def _positional_names(signature: inspect.Signature) -> tuple[str, ...] | None:
    """Return the parameter names when every one can be passed by position, else None."""
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    parameters = signature.parameters.values()
    if all(parameter.kind in positional for parameter in parameters):
        return tuple(signature.parameters)
    return None


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

    flow: Any  # SyncFlow for a sync function, AsyncFlow for an async one
    observation: Observation
    namespace: str
    signature: inspect.Signature
    positional: tuple[str, ...] | None  # every parameter's name, if all are positional
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
            names = self.positional
            if names is not None and not kwargs and len(args) == len(names):
                # Every argument given by position: what `bind` would return, without it.
                arguments = dict(zip(names, args, strict=True))
            else:
                bound = self.signature.bind(*args, **kwargs)  # a bad call fails here, unclaimed
                bound.apply_defaults()
                arguments = bound.arguments
        raw_key = arguments[self.key] if isinstance(self.key, str) else self.key(*args, **kwargs)
        scope: object
        if isinstance(self.scope, str):
            scope = self.scope
        else:
            scope = self.scope(*args, **kwargs)
            if scope is None or scope == "":
                raise InvalidKeyError(
                    f"The scope function of {self.namespace} returned {scope!r} for this call: "
                    "a call without a scope is refused rather than shared with every other (B8)."
                )
        identity = Identity(self.namespace, str(scope), key_text(raw_key))
        if isinstance(self.fingerprint, tuple):
            chosen: object = {name: arguments[name] for name in self.fingerprint}
        else:
            chosen = self.fingerprint(*args, **kwargs)
        try:
            return identity, fingerprint_value(chosen)  # B39: revised if 0.1.0's differs
        except (TypeError, ValueError, RecursionError) as error:
            raise ConfigurationError(
                f"The arguments of {self.namespace} cannot be fingerprinted ({error}). Choose "
                "the arguments that make the request with fingerprint=[...] or a callable."
            ) from error

    def is_final(self, error: BaseException) -> bool:
        """Return whether `error` is stored as the outcome rather than releasing the key: a
        final exception, or a group of them (`retrysafe._outcomes.is_final`); never an
        interruption, whatever `final_exceptions` lists: it keeps the key in flight (B40)."""
        return not interrupts(error) and is_final(error, self.final_exceptions)


def _call_sync(
    plan: _Plan, func: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    operation = plan.observation.start()
    try:
        return _run_sync(plan, func, args, kwargs)
    except (InvalidKeyError, StoreError) as error:
        decide("invalid" if isinstance(error, InvalidKeyError) else "unavailable")
        raise
    finally:
        plan.observation.end(operation)


async def _call_async(
    plan: _Plan, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    operation = plan.observation.start()
    try:
        return await _run_async(plan, func, args, kwargs)
    except (InvalidKeyError, StoreError) as error:
        decide("invalid" if isinstance(error, InvalidKeyError) else "unavailable")
        raise
    finally:
        plan.observation.end(operation)


def _run_sync(
    plan: _Plan, func: Callable[..., object], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    identity, fingerprint = plan.identify(args, kwargs)
    flow: SyncFlow = plan.flow
    admitted = flow.admit(identity, fingerprint, plan)
    observing.admitted(admitted.decision)
    if admitted.decision is Decision.REPLAY:
        return plan.outcomes.replay(_outcome_of(admitted))
    if admitted.decision is not Decision.EXECUTE:
        raise admitted.error(plan.namespace)
    with flow.execution(admitted, plan) as execution:
        try:
            value = func(*args, **kwargs)
        except BaseException as error:
            if plan.is_final(error):
                execution.finish(plan.outcomes.raised(error))
            raise  # any other exception releases the claim (B28); an interruption keeps it (B40)
        _refuse_awaitable(plan, value)  # raised here, it releases the claim
        outcome, problem = plan.outcomes.returned(value)
        execution.finish(outcome)
    if problem is not None:
        raise problem
    return value


async def _run_async(
    plan: _Plan, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> object:
    identity, fingerprint = plan.identify(args, kwargs)
    flow: AsyncFlow = plan.flow
    admitted = await flow.admit(identity, fingerprint, plan)
    observing.admitted(admitted.decision)
    if admitted.decision is Decision.REPLAY:
        return plan.outcomes.replay(_outcome_of(admitted))
    if admitted.decision is not Decision.EXECUTE:
        raise admitted.error(plan.namespace)
    async with flow.execution(admitted, plan) as execution:
        try:
            value = await func(*args, **kwargs)
        except BaseException as error:
            if plan.is_final(error):
                await execution.finish(plan.outcomes.raised(error))
            raise  # any other exception releases the claim (B28); an interruption keeps it (B40)
        outcome, problem = plan.outcomes.returned(value)
        await execution.finish(outcome)
    if problem is not None:
        raise problem
    return value


def _outcome_of(admitted: Admission) -> bytes:
    return (admitted.record.outcome if admitted.record is not None else None) or b""


def _refuse_awaitable(plan: _Plan, value: object) -> None:
    """Refuse an awaitable that a sync function returned (a `def` returning a coroutine): it
    has not run, so it is closed and the claim released, not stored as not serializable."""
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()
        raise ConfigurationError(
            f"{plan.namespace} returned an awaitable, which a sync store cannot await: it was not "
            "run, and its key is released. Make it `async def`, with an async store."
        )
