"""`versioned_message`: apply a message only if its version is newer than its entity's last one.

Two modes, chosen by what the decorator is given:

- a store (any backend): the message id is claimed first, as `idempotent_message` does, then
  the entity's record in the store (`AsyncStoreVersions`) orders the deliveries of one entity
  and keeps its last applied version;
- the handler's own database connection (`sqlite3`, psycopg sync or async), or a `connect`
  callable that makes one for each delivery: the version's compare-and-set runs in the
  transaction of the handler's writes (`_versioned_sql`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Concatenate, Final, ParamSpec, Required, TypeVar, Unpack, cast, overload

from retrysafe._decorator import CallOptions
from retrysafe._errors import ConfigurationError, InvalidKeyError
from retrysafe._flow import DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_WAIT
from retrysafe._versions import ENTITIES_SUFFIX, entity_text, version_number
from retrysafe.consumers._messages import idempotent_message, message_body_of, message_id_of

__all__ = ["VersionCounter", "message_header", "versioned_message"]

P = ParamSpec("P")
R = TypeVar("R")
KeyFunction = Callable[..., object]

_LOGGER: Final = logging.getLogger("retrysafe.consumers")


class VersionedOptions(CallOptions, total=False):
    """The options of `versioned_message` that store mode passes on to `idempotent_message`
    (`scope` serves both modes)."""


class VersionCounter:
    """How many deliveries a versioned consumer applied, and how many it skipped.

    Attributes:
        applied: deliveries whose handler ran and whose version was recorded.
        stale: deliveries skipped because their version was not newer than the entity's.
        replayed: deliveries of a message id already handled (store mode), answered from its
            stored outcome without a version check.
    """

    __slots__ = ("_lock", "applied", "replayed", "stale")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.applied = self.stale = self.replayed = 0

    @property
    def skipped(self) -> int:
        """Deliveries whose handler was not called: `stale` plus `replayed`."""
        return self.stale + self.replayed

    def count(self, what: str) -> None:
        """Add one to `applied`, `stale` or `replayed`."""
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    def __repr__(self) -> str:
        return (
            f"VersionCounter(applied={self.applied}, stale={self.stale}, replayed={self.replayed})"
        )


def message_header(name: str) -> KeyFunction:
    """Return a key function that reads header `name` of an aio-pika message or pika properties.

    For `entity=` and `version=`: `versioned_message(..., version=message_header("version"))`.
    A message without the header raises `InvalidKeyError` (not requeued).
    """

    def header(*args: object, **kwargs: object) -> object:
        for value in (*args, *kwargs.values()):
            headers = getattr(value, "headers", None)
            if isinstance(headers, dict) and name in headers:
                return headers[name]
        raise InvalidKeyError(f"The message has no {name!r} header, so it has no {name}.")

    header.__qualname__ = f"message_header({name!r})"
    return header


@dataclasses.dataclass(slots=True)
class _Delivery:
    """What the outer wrapper read from a message, for the handler under the message claim."""

    scope: str
    entity: str
    version: int
    ran: bool = False
    former_scope: str | None = None  # a bytes scope as earlier releases keyed it: `b'acme'`


_DELIVERY: contextvars.ContextVar[_Delivery] = contextvars.ContextVar("retrysafe_delivery")


@dataclasses.dataclass(frozen=True, slots=True)
class _Reader:
    """Reads a delivery's scope, entity and version from the handler's arguments."""

    entity: KeyFunction
    version: KeyFunction
    scope: str | KeyFunction
    decode_scope: bool = False  # transactional mode: a bytes scope is its text, not its repr

    def __call__(self, args: tuple[object, ...], kwargs: dict[str, object]) -> _Delivery:
        scope: object = self.scope
        if callable(self.scope):
            scope = self.scope(*args, **kwargs)
            if scope is None or scope == "":
                raise InvalidKeyError(
                    f"The scope function returned {scope!r} for this message: a message "
                    "without a scope is refused rather than applied to every scope's entity (B8)."
                )
        former = None
        if self.decode_scope and isinstance(scope, bytes | bytearray):
            former = str(scope)  # what earlier releases keyed it by (B39)
            scope = bytes(scope).decode("utf-8", "surrogateescape")  # refused if not UTF-8
        entity = entity_text(self.entity(*args, **kwargs))
        version = version_number(self.version(*args, **kwargs))
        return _Delivery(str(scope), entity, version, former_scope=former)


class _Wrapping:
    """What `versioned_message` returns, whatever its target: a decorator that wraps a sync or
    an async handler, of the colour of the store or connection, if that says one."""

    def __init__(
        self, read: _Reader, counter: VersionCounter, make: Any, colour: tuple[str, bool | None]
    ) -> None:
        self.read, self.counter, self.make = read, counter, make
        self.target_name, self.target_is_async = colour

    def wrap(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap `func`, refusing one of the other colour than the target's."""
        is_async = inspect.iscoroutinefunction(func)
        if self.target_is_async is not None and is_async != self.target_is_async:
            wanted = "an async store or connection" if is_async else "a sync store or connection"
            raise ConfigurationError(
                f"{func.__qualname__} is {'async' if is_async else 'sync'}, so "
                f"versioned_message needs {wanted}, not {self.target_name}."
            )
        return cast("Callable[..., Any]", self.make(func, self.read, self.counter))


class _Decorator(_Wrapping):
    """The decorator for a store or a connection: the wrapper takes the handler's arguments."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R | None]: ...

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return self.wrap(func)


class _ConnectDecorator(_Wrapping):
    """The decorator for `connect=`: the handler takes the delivery's connection first, and
    the wrapper the rest of its arguments."""

    @overload
    def __call__(
        self, func: Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[Concatenate[Any, P], R]) -> Callable[P, R | None]: ...

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        return self.wrap(func)


class _Keys(VersionedOptions, total=False):
    """`versioned_message`'s keyword arguments of every form (the overloads' typing)."""

    namespace: Required[str]
    entity: Required[KeyFunction]
    version: Required[KeyFunction]
    counter: VersionCounter | None
    table: str | None


@overload
def versioned_message(
    target: object,
    *,
    message_id: KeyFunction = message_id_of,
    body: KeyFunction = message_body_of,
    **options: Unpack[_Keys],
) -> _Decorator: ...


@overload
def versioned_message(
    *, connect: Callable[[], object], **options: Unpack[_Keys]
) -> _ConnectDecorator: ...


def versioned_message(
    target: object = None,
    *,
    connect: Callable[[], object] | None = None,
    namespace: str,
    entity: KeyFunction,
    version: KeyFunction,
    counter: VersionCounter | None = None,
    table: str | None = None,
    message_id: KeyFunction = message_id_of,
    body: KeyFunction = message_body_of,
    **options: Unpack[VersionedOptions],
) -> _Decorator | _ConnectDecorator:
    """Apply a message only if its version is newer than the last applied for its entity.

    An older or equal version is skipped: the handler is not called, the wrapper returns None
    (acknowledge the message), and `counter` counts it. Deliveries of one entity are applied
    one at a time; different entities run side by side.

    Args:
        target: a store (`open_store` / `open_async_store`): the message id is claimed as by
            `idempotent_message`, and each entity's last applied version kept in the store.
            Or the connection the handler writes with (`sqlite3.Connection`, psycopg
            `Connection` or `AsyncConnection`): the version is checked and recorded in the
            table `table`, in the same transaction as the handler's writes. Once the server
            closes that connection, every delivery raises `ConnectionClosedError`.
        connect: instead of `target`, transactional mode with a connection of each delivery's
            own: a callable returning a connection (closed after the delivery), a coroutine
            of one, or a context manager of one (a psycopg pool's `pool.connection`). The
            handler takes it as its first argument; a consumer whose connection the server
            ended recovers with the next delivery.
        namespace: what separates this consumer's entities (and message ids) from others'.
        entity: a callable of the handler's arguments returning the entity id: a non-empty
            `str`, an `int` or a `UUID`. `message_header(name)` reads a header.
        version: a callable of the handler's arguments returning the version, an `int` (or
            its decimal text) that grows with each change of the entity.
        counter: where applied and skipped deliveries are counted; read it for monitoring.
        table: transactional mode's versions table; default `retrysafe_versions`.
        message_id, body: store mode: the message id and fingerprint, as for
            `idempotent_message`.
        scope: a fixed scope or a callable of the arguments; entities of two scopes never meet.
        retention, lease, wait, final_exceptions, serializer, observers: store mode, as for
            `idempotent_message`; `retention` also bounds how long an idle entity's version
            is remembered, and `wait` how long a delivery waits for another of its entity.
    """
    from retrysafe.consumers._versioned_sql import in_transaction, refuse_target  # noqa: PLC0415

    if not isinstance(namespace, str) or not namespace:
        raise ConfigurationError("versioned_message needs a non-empty namespace.")
    if not callable(entity) or not callable(version):
        raise ConfigurationError("entity and version must be callables of the handler's args.")
    if (target is None) == (connect is None):
        raise ConfigurationError("versioned_message takes a store or a connection, or connect=.")
    read = _Reader(entity, version, options.pop("scope", ""))
    counter = counter if counter is not None else VersionCounter()
    if callable(getattr(target, "claim", None)):
        if table is not None:
            raise ConfigurationError("table is for a database connection, not a store.")
        # The message id is claimed in the delivery's scope too: two tenants' ids never meet.
        given = {"message_id": message_id, "body": body, "scope": read.scope, **options}
        is_async = inspect.iscoroutinefunction(getattr(target, "claim", None))
        colour = (type(target).__name__, is_async)
        return _Decorator(read, counter, _in_store(target, namespace, given), colour)
    store_only = [*options, *(["message_id"] if message_id is not message_id_of else [])]
    store_only += ["body"] if body is not message_body_of else []
    if store_only:
        raise ConfigurationError(
            f"{', '.join(sorted(store_only))}: store-mode options, not for a connection."
        )
    read = dataclasses.replace(read, decode_scope=True)
    if connect is not None:
        if not callable(connect):
            raise ConfigurationError(f"connect must be callable, not {type(connect).__name__}.")
        make = in_transaction(connect, namespace, table)
        return _ConnectDecorator(read, counter, make, ("connect", None))
    refusal = refuse_target(target)
    if refusal is not None:
        raise ConfigurationError(refusal)
    colour = (type(target).__name__, _drivers().is_async_psycopg_connection(target))
    return _Decorator(read, counter, in_transaction(target, namespace, table), colour)


def _in_store(store: Any, namespace: str, options: dict[str, Any]) -> Any:
    """Return what wraps a handler in store mode: message claim, then the entity's version."""
    from retrysafe.transactions._async.versions import AsyncStoreVersions  # noqa: PLC0415
    from retrysafe.transactions._sync.versions import StoreVersions  # noqa: PLC0415

    is_async = inspect.iscoroutinefunction(store.claim)
    kind = AsyncStoreVersions if is_async else StoreVersions
    versions = kind(
        store,
        f"{namespace}{ENTITIES_SUFFIX}",
        lease=options.get("lease", DEFAULT_LEASE),
        retention=options.get("retention", DEFAULT_RETENTION),
        wait=options.get("wait", DEFAULT_WAIT),
    )

    def make(func: Callable[..., Any], read: _Reader, counter: VersionCounter) -> Any:
        def apply(args: Any, kwargs: Any) -> Any:
            delivery = _DELIVERY.get()
            delivery.ran = True
            effect = functools.partial(func, *args, **kwargs)
            return versions.apply(delivery.scope, delivery.entity, delivery.version, effect)

        if is_async:

            @functools.wraps(func)
            async def claimed_async(*args: Any, **kwargs: Any) -> Any:
                return counted(counter, await apply(args, kwargs))

            claimed = idempotent_message(store, namespace=namespace, **options)(claimed_async)

            @functools.wraps(func)
            async def handle_async(*args: Any, **kwargs: Any) -> Any:
                with _delivering(read(args, kwargs)) as delivery:
                    return _replayed(counter, delivery, await claimed(*args, **kwargs))

            return handle_async

        @functools.wraps(func)
        def claimed_sync(*args: Any, **kwargs: Any) -> Any:
            return counted(counter, apply(args, kwargs))

        claimed_ = idempotent_message(store, namespace=namespace, **options)(claimed_sync)

        @functools.wraps(func)
        def handle_sync(*args: Any, **kwargs: Any) -> Any:
            with _delivering(read(args, kwargs)) as delivery:
                return _replayed(counter, delivery, claimed_(*args, **kwargs))

        return handle_sync

    return make


def _drivers() -> Any:
    """Return transactional mode's driver probes, imported on first use (store mode needs none)."""
    from retrysafe.transactions import _drivers as drivers  # noqa: PLC0415

    return drivers


@contextlib.contextmanager
def _delivering(delivery: _Delivery) -> Iterator[_Delivery]:
    """Make `delivery` the current one, for the handler that runs under the message claim."""
    token = _DELIVERY.set(delivery)
    try:
        yield delivery
    finally:
        _DELIVERY.reset(token)


def counted(counter: VersionCounter, result: tuple[bool, Any]) -> Any:
    """Count an applied or a stale delivery; return the handler's value (None if skipped)."""
    applied, value = result
    counter.count("applied" if applied else "stale")
    if not applied:
        _LOGGER.debug("skipped a delivery whose version is not newer than its entity's")
    return value


def _replayed(counter: VersionCounter, delivery: _Delivery, value: Any) -> Any:
    """Count a delivery answered by the message-id claim alone; return its value."""
    if not delivery.ran:
        counter.count("replayed")
    return value


def applied(versions: Any, delivery: _Delivery, effect: Callable[[], Any]) -> Any:
    """Return transactional mode's `versions.apply` of `effect` for a delivery (a coroutine of
    it, for an async connection's)."""
    return versions.apply(
        delivery.scope, delivery.entity, delivery.version, effect,
        former_scope=delivery.former_scope,
    )  # fmt: skip
