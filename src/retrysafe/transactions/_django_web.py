"""The `@transactional` view decorator for Django: the request's key commits with the view's writes.

A keyed request is read as the native middleware reads it (`retrysafe.integrations.django`):
the key, the body within its limit, and the scope from `request.user` (B8), else the
credential header. Then the request's work unit (`WorkUnit`, shared with Flask and the ASGI
middleware) claims the key in an atomic block on the view's database, runs the view, and
commits the response with its writes before the view returns; a repeat gets the stored
response. Its settings are the middleware's: `settings.RETRYSAFE` (in upper case), under the
decorator's own options; its `ENCRYPTION` keyring encrypts the stored responses (and the scope
secret), as it does the middleware's store.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Unpack

from retrysafe._encryption import Keyring
from retrysafe._flow import Counters
from retrysafe._flow.observing import Observation, identify
from retrysafe._http import Response, RouteSettings, Settings
from retrysafe._http.scope import Scoper
from retrysafe.integrations import _django_config as django_config
from retrysafe.integrations._django_middleware import _django_response, _user
from retrysafe.integrations._inside import _prepare, body_within
from retrysafe.integrations._routes import RouteOptions, mark
from retrysafe.stores._sql import DEFAULT_TABLE
from retrysafe.transactions._django import DjangoBackend
from retrysafe.transactions._state import ClaimOptions
from retrysafe.transactions._sync.transaction import Transaction
from retrysafe.transactions._sync.work import WorkUnit, encrypting, load_secret_of
from retrysafe.transactions._web import claim_options, connect_failed, handler_name, tracks

try:
    from asgiref.sync import iscoroutinefunction
    from django.core.signals import setting_changed  # type: ignore[import-untyped]
    from django.db import Error as DatabaseError  # type: ignore[import-untyped]
    from django.db import transaction
except ImportError as error:  # pragma: no cover - depends on the environment
    from retrysafe.integrations._routes import missing_framework

    raise missing_framework("retrysafe.transactions.django", "Django") from error

__all__ = ["transactional"]

F = TypeVar("F", bound=Callable[..., Any])
Request = Any  # Django's request and response classes are untyped

ASYNC_VIEW = (
    "@transactional takes a sync view: Django's transactions are sync only. An async view (an "
    "`async def`, or a class-based view whose handlers are async) calls the sync code that "
    "writes through `sync_to_async` instead; under ASGI, Django runs a sync view in a thread."
)


@dataclass(slots=True)
class _Config:
    """What every transactional view of the process shares, read from `settings.RETRYSAFE`."""

    settings: Settings
    observation: Observation
    encryption: Keyring | None = None
    counters: Counters = field(default_factory=Counters)
    scopers: dict[tuple[str, str], Scoper] = field(default_factory=dict)


_config: _Config | None = None
_config_lock = threading.Lock()


def _current() -> _Config:
    """Return the configuration, read from the settings once (again when they change)."""
    global _config  # noqa: PLW0603 - one configuration per process, like Django's settings
    with _config_lock:
        if _config is None:
            _, _, options = django_config.settings_from_django()
            _config = _Config(
                Settings(**options),
                Observation("transaction", django_config.observers_from_django()),
                django_config.encryption_from_django(),
            )
        return _config


def _forget_config(*, setting: str, **_: object) -> None:
    """Read `RETRYSAFE` again after a test changed it (`override_settings`)."""
    global _config  # noqa: PLW0603 - see _current
    if setting == "RETRYSAFE":
        with _config_lock:
            _config = None


setting_changed.connect(_forget_config, dispatch_uid="retrysafe.transactions.django")


class _DjangoWorkUnit(WorkUnit):
    """`WorkUnit` on the Django backend, which it cannot pick from a connection itself (the
    driver dispatch knows the raw drivers' connections, not Django's)."""

    def __init__(
        self,
        backend: DjangoBackend,
        claim: ClaimOptions | None,
        settings: Settings,
        config: _Config,
    ) -> None:
        # The fields WorkUnit.__init__ sets, with the backend given rather than dispatched.
        self.connection = backend.connection
        self.settings = settings
        self.counters = config.counters
        self._backend = encrypting(backend, config.encryption)
        self._tx = None if claim is None else Transaction(self._backend, **claim)


def transactional(
    *, using: str | None = None, table: str | None = None, **options: Unpack[RouteOptions]
) -> Callable[[F], F]:
    """Run the view in transactional mode, passing it the request's transaction as `tx`.

    Args:
        using: the database alias the view writes to (default: `"default"`).
        table: the records table in that database (default: `retrysafe_records`).
        options: `RouteSettings` fields for this view: `required=True`, `retention=3600`, ...
    """
    route = RouteSettings(**options)
    records = table or DEFAULT_TABLE

    def decorate(view: F) -> F:
        if iscoroutinefunction(view):  # asgiref's: also an async class-based view's as_view()
            raise TypeError(ASYNC_VIEW)

        @functools.wraps(view)
        def transactional_view(request: Request, *args: Any, **kwargs: Any) -> Any:
            call = functools.partial(view, request, *args, **kwargs)
            return _handle(call, route, request, DjangoBackend(using, records))

        return mark(transactional_view, None)  # type: ignore[return-value]

    return decorate


def _handle(
    view: Callable[..., Any], route: RouteSettings, request: Request, backend: DjangoBackend
) -> Any:
    """Answer a request to a transactional view: a problem, a replay, or the view's response."""
    config = _current()
    settings = config.settings.with_route(route)
    meta = request.META
    value: str | None = meta.get("HTTP_IDEMPOTENCY_KEY")
    if not tracks(settings, request.method, value is not None):
        return _transact(view, _DjangoWorkUnit(backend, None, settings, config))
    operation = config.observation.start()
    try:
        try:
            scoper = _scoper(config, backend)
        except Exception:
            return _django_response(connect_failed(settings))
        prepared = _prepare(
            meta,
            settings,
            [] if value is None else [value.encode("latin-1")],
            scoper,
            body=lambda s: body_within(s, meta.get("CONTENT_LENGTH") or "", lambda: request.body),
            user=lambda: _user(request),
        )
        if isinstance(prepared, Response):
            return _django_response(prepared)
        identify(prepared[0])  # (identity, fingerprint)
        claim = claim_options(settings, None, *prepared)
        return _transact(view, _DjangoWorkUnit(backend, claim, settings, config))
    finally:
        config.observation.end(operation)


def _transact(view: Callable[..., Any], unit: _DjangoWorkUnit) -> Any:
    """Run the view in the work unit's atomic block; answer once that has committed."""
    settings = unit.settings
    try:
        answer = unit.start()
    except DatabaseError:
        return _django_response(connect_failed(settings))
    if answer is not None:
        return _django_response(answer)
    try:
        response = _sync_response(view(tx=unit.request_transaction()))
        if response.streaming:  # the whole body commits with the writes, so it is read here
            body: bytes = b"".join(response.streaming_content)
            response.streaming_content = [body]
        else:
            body = response.content
    except BaseException:
        unit.rollback()
        raise
    headers = tuple(
        (str(name).lower().encode("latin-1"), str(value).encode("latin-1"))
        for name, value in response.items()
    )
    answered = Response(response.status_code, headers, body)
    problem = unit.finish(answered, handler=handler_name(view))
    return response if problem is None else _django_response(problem)


def _sync_response(response: Any) -> Any:
    """Return a view's response; refuse an awaitable, returned by an async view that
    decoration could not tell (a sync callable that returns a coroutine), never running it."""
    if inspect.isawaitable(response):
        if inspect.iscoroutine(response):
            response.close()  # nothing of it ran
        raise TypeError(ASYNC_VIEW)
    return response


def _scoper(config: _Config, backend: DjangoBackend) -> Scoper:
    """Return the scoper: the configured secret, else the one kept in the records table."""
    secret = Scoper.configured_secret(config.settings)
    if secret is not None:
        return config.scopers.setdefault(("", ""), Scoper(secret))
    key = (backend.alias, backend.table)
    scoper = config.scopers.get(key)
    if scoper is None:  # kept only once known committed (`load_secret_of`)
        secret, committed = load_secret_of(encrypting(backend, config.encryption))
        scoper = Scoper(secret)
        if committed:
            config.scopers[key] = scoper
        else:  # read or made in the request's atomic block: kept once that commits
            keep = functools.partial(config.scopers.setdefault, key, scoper)
            transaction.on_commit(keep, using=backend.alias)
    return scoper
