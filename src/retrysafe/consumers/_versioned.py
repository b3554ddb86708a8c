"""`versioned_message`: apply a message only if its version is newer than its entity's last one.

Two modes, chosen by what the decorator is given:

- a store (any backend): the message id is claimed first, as `idempotent_message` does, then
  the entity's record in the store (`AsyncStoreVersions`) orders the deliveries of one entity
  and keeps its last applied version;
- the handler's own database connection (`sqlite3`, psycopg sync or async): the version's
  compare-and-set runs in the transaction of the handler's writes (`AsyncSQLVersions`).
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
from typing import Any, Final, ParamSpec, TypeVar, Unpack, cast, overload

import anyio

from retrysafe._decorator import CallOptions
from retrysafe._errors import ConfigurationError, InvalidKeyError
from retrysafe._flow import DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_WAIT
from retrysafe._versions import DEFAULT_TABLE, ENTITIES_SUFFIX, entity_text, version_number
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


_DELIVERY: contextvars.ContextVar[_Delivery] = contextvars.ContextVar("retrysafe_delivery")


@dataclasses.dataclass(frozen=True, slots=True)
class _Reader:
    """Reads a delivery's scope, entity and version from the handler's arguments."""

    entity: KeyFunction
    version: KeyFunction
    scope: str | KeyFunction

    def __call__(self, args: tuple[object, ...], kwargs: dict[str, object]) -> _Delivery:
        scope: object = self.scope
        if callable(self.scope):
            scope = self.scope(*args, **kwargs)
            if scope is None or scope == "":
                raise InvalidKeyError(
                    f"The scope function returned {scope!r} for this message: a message "
                    "without a scope is refused rather than applied to every scope's entity (B8)."
                )
        entity = entity_text(self.entity(*args, **kwargs))
        return _Delivery(str(scope), entity, version_number(self.version(*args, **kwargs)))


class _Decorator:
    """What `versioned_message` returns: a decorator for a sync or an async handler."""

    def __init__(self, target: object, read: _Reader, counter: VersionCounter, make: Any) -> None:
        self.target, self.read, self.counter, self.make = target, read, counter, make

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R | None]: ...

    def __call__(self, func: Callable[..., Any]) -> Callable[..., Any]:
        is_async = inspect.iscoroutinefunction(func)
        target_is_async = inspect.iscoroutinefunction(
            getattr(self.target, "claim", None)
        ) or _drivers().is_async_psycopg_connection(self.target)
        if is_async != target_is_async:
            wanted = "an async store or connection" if is_async else "a sync store or connection"
            raise ConfigurationError(
                f"{func.__qualname__} is {'async' if is_async else 'sync'}, so "
                f"versioned_message needs {wanted}, not {type(self.target).__name__}."
            )
        return cast("Callable[..., Any]", self.make(func, self.read, self.counter))


def versioned_message(
    target: object,
    *,
    namespace: str,
    entity: KeyFunction,
    version: KeyFunction,
    counter: VersionCounter | None = None,
    table: str | None = None,
    message_id: KeyFunction = message_id_of,
    body: KeyFunction = message_body_of,
    **options: Unpack[VersionedOptions],
) -> _Decorator:
    """Apply a message only if its version is newer than the last applied for its entity.

    An older or equal version is skipped: the handler is not called, the wrapper returns None
    (acknowledge the message), and `counter` counts it. Deliveries of one entity are applied
    one at a time; different entities run side by side.

    Args:
        target: a store (`open_store` / `open_async_store`): the message id is claimed as by
            `idempotent_message`, and each entity's last applied version kept in the store.
            Or the connection the handler writes with (`sqlite3.Connection`, psycopg
            `Connection` or `AsyncConnection`): the version is checked and recorded in the
            table `table`, in the same transaction as the handler's writes.
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
    if not isinstance(namespace, str) or not namespace:
        raise ConfigurationError("versioned_message needs a non-empty namespace.")
    if not callable(entity) or not callable(version):
        raise ConfigurationError("entity and version must be callables of the handler's args.")
    read = _Reader(entity, version, options.pop("scope", ""))
    counter = counter if counter is not None else VersionCounter()
    if callable(getattr(target, "claim", None)):
        if table is not None:
            raise ConfigurationError("table is for a database connection, not a store.")
        # The message id is claimed in the delivery's scope too: two tenants' ids never meet.
        given = {"message_id": message_id, "body": body, "scope": read.scope, **options}
        return _Decorator(target, read, counter, _in_store(target, namespace, given))
    store_only = [*options, *(["message_id"] if message_id is not message_id_of else [])]
    store_only += ["body"] if body is not message_body_of else []
    if store_only:
        raise ConfigurationError(
            f"{', '.join(sorted(store_only))}: store-mode options, not for a connection."
        )
    if not _drivers().is_connection(target) or _drivers().is_session(target):
        raise ConfigurationError(
            "versioned_message takes a store, a sqlite3.Connection or a psycopg Connection or "
            f"AsyncConnection, not {type(target).__name__}."
        )
    return _Decorator(target, read, counter, _in_transaction(target, namespace, table))


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
                return _counted(counter, await apply(args, kwargs))

            claimed = idempotent_message(store, namespace=namespace, **options)(claimed_async)

            @functools.wraps(func)
            async def handle_async(*args: Any, **kwargs: Any) -> Any:
                with _delivering(read(args, kwargs)) as delivery:
                    return _replayed(counter, delivery, await claimed(*args, **kwargs))

            return handle_async

        @functools.wraps(func)
        def claimed_sync(*args: Any, **kwargs: Any) -> Any:
            return _counted(counter, apply(args, kwargs))

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


def _counted(counter: VersionCounter, result: tuple[bool, Any]) -> Any:
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


def _in_transaction(connection: Any, namespace: str, table: str | None) -> Any:
    """Return what wraps a handler in transactional mode: the version in its transaction."""
    from retrysafe.transactions._async.versions import AsyncSQLVersions  # noqa: PLC0415
    from retrysafe.transactions._sqlite_versions import SQLiteTransactions  # noqa: PLC0415
    from retrysafe.transactions._sync.versions import SQLVersions  # noqa: PLC0415

    table = DEFAULT_TABLE if table is None else table
    if _drivers().is_async_psycopg_connection(connection):
        versions: Any = AsyncSQLVersions(connection, namespace, table=table, mark="%s")
    elif _drivers().is_sqlite_connection(connection):
        sqlite = SQLiteTransactions(connection)
        versions = SQLVersions(sqlite, namespace, table=table, mark="?")
    else:
        versions = SQLVersions(connection, namespace, table=table, mark="%s")

    def make(func: Callable[..., Any], read: _Reader, counter: VersionCounter) -> Any:
        if inspect.iscoroutinefunction(func):
            lock = anyio.Lock()  # one transaction at a time on the connection

            @functools.wraps(func)
            async def handle_async(*args: Any, **kwargs: Any) -> Any:
                delivery = read(args, kwargs)
                effect = functools.partial(func, *args, **kwargs)
                async with lock:
                    result = await versions.apply(*_where(delivery), effect)
                return _counted(counter, result)

            return handle_async
        guard = threading.Lock()

        @functools.wraps(func)
        def handle_sync(*args: Any, **kwargs: Any) -> Any:
            delivery = read(args, kwargs)
            with guard:
                result = versions.apply(*_where(delivery), functools.partial(func, *args, **kwargs))
            return _counted(counter, result)

        return handle_sync

    return make


def _where(delivery: _Delivery) -> tuple[str, str, int]:
    return delivery.scope, delivery.entity, delivery.version
