"""Django's own middleware: the idempotency flow inside Django, with `request.user` as the caller.

    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "retrysafe.integrations.django.IdempotencyMiddleware",  # after authentication
    ]

How it maps onto Django's request handling:

- `__call__`, before the rest of the stack: for a keyed request, read the body into Django's
  cache (`request.body`), up to the limit of the route it resolves to, so a later
  `request.POST` parse (CSRF on a multipart form) cannot leave it unreadable.
- `process_view`, once Django has routed the request and every middleware listed before this
  one has run its own `process_view` (CSRF, `LoginRequiredMiddleware`): admit. A replay or a
  problem is answered at once; the view does not run. The view's mark says the route's
  settings, over `RETRYSAFE["ROUTES"]`; `request.user` names the principal (B8). A user that
  fails to load is the 500 scope-unresolved problem; one that refuses (`PermissionDenied`) is
  Django's to answer.
- `__call__`, after the rest of the stack: the response, as the view and the middleware after
  this one made it, is stored (status, allow-listed headers, content) or the claim released
  (B18), as the WSGI middleware does.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, Final

from retrysafe._flow.exiting import drain_held
from retrysafe._http import Header, Response, RouteSettings, Settings
from retrysafe._http.routing import RoutePath
from retrysafe.integrations import _django_config as django_config
from retrysafe.integrations._inside import InsideMiddleware, Running, body_within, header_lines
from retrysafe.integrations._routes import (
    UNMARKED,
    RouteCache,
    Unmarked,
    framework_imports,
    view_mark,
)

with framework_imports("retrysafe.integrations.django", "Django"):
    from django.conf import settings as django_settings  # type: ignore[import-untyped]
    from django.core.exceptions import (  # type: ignore[import-untyped]
        BadRequest,
        ImproperlyConfigured,
        PermissionDenied,
        SuspiciousOperation,
    )
    from django.http import (  # type: ignore[import-untyped]
        Http404,
        HttpResponse,
        RawPostDataException,
    )
    from django.urls import Resolver404, resolve  # type: ignore[import-untyped]
    from django.utils.functional import LazyObject  # type: ignore[import-untyped]

__all__ = ["IdempotencyMiddleware"]

_RUNNING: Final = "_retrysafe_running"
"""The request attribute holding the claim `process_view` admitted, until `__call__` ends it."""
_AUTHENTICATION: Final = "django.contrib.auth.middleware.AuthenticationMiddleware"
_PUBLIC_NAME: Final = "retrysafe.integrations.django.IdempotencyMiddleware"

# Django's request and response classes are untyped; these name what is passed around.
Request = Any
View = Callable[..., Any]
Routed = tuple[Request, View | None]
"""A request and the view Django routed it to (None: not routed yet, resolved on demand)."""


class _ViewRoutes:
    """The `route_settings` hook: the path patterns' settings with the routed view's mark."""

    def __init__(self, routes: dict[str, RouteSettings | None]) -> None:
        self._cache = RouteCache(routes)

    def __call__(self, routed: Routed) -> RouteSettings | None:
        request, view = routed
        path = RoutePath(request.path_info, request.path)  # `path` has the mount prefix
        key: Hashable = (request.method, path.whole, str(path), getattr(request, "urlconf", None))
        return self._cache.settings(key, path, lambda: _mark(request, view))


class IdempotencyMiddleware(InsideMiddleware[Callable[[Request], Any], Routed]):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry, in Django.

    List it in `MIDDLEWARE` after `AuthenticationMiddleware` (and after anything else that may
    refuse a request, such as CSRF). It is configured by `settings.RETRYSAFE`: `STORE` (a store
    URL, required), `ROUTES` (path patterns for unmarked views), `OBSERVERS` (who to tell what
    it does, `retrysafe.observe`: observers or their dotted paths), `ENCRYPTION` (a `Keyring`
    that encrypts the stored responses, docs/encryption.md), and any middleware setting in upper
    case (`WAIT`, `ANONYMOUS`, `SCOPE_SECRET`, ...). Views are marked with
    `retrysafe.integrations.django.idempotency`. Sync only: under ASGI, Django runs it in a
    thread, with the sync store.

    Args:
        get_response: the rest of Django's handler, as Django passes it.
    """

    sync_capable = True
    async_capable = False
    refusals = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)  # Django answers

    def __init__(self, get_response: Callable[[Request], Any]) -> None:
        _check_order()
        url, routes, options = django_config.settings_from_django()
        super().__init__(
            get_response,
            store=django_config.configured_store(url),
            route_settings=_ViewRoutes(routes),
            observers=django_config.observers_from_django(),
            **options,
        )
        self.get_response = get_response

    @staticmethod
    def drain(timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (None: `drain_timeout`, 10) for the outcomes this
        process holds to be stored (B19, B40); return whether none is left. It runs by itself
        at interpreter exit; call it from a server's shutdown hook (gunicorn's `worker_exit`)
        to drain sooner."""
        return drain_held(timeout)

    def __call__(self, request: Request) -> Any:
        """Handle one request: run the stack, then store the response of a claimed one."""
        if request.method in self._methods and "HTTP_IDEMPOTENCY_KEY" in request.META:
            _keep_body(request, self._gate.settings_for((request, None), request.method, True))
        try:
            response = self.get_response(request)
        except BaseException as error:  # Django raises here only when told to propagate errors
            running = _take(request)
            if running is not None:
                running.release(error)
            raise
        running = _take(request)
        return response if running is None else _finish(running, response)

    def process_view(
        self, request: Request, view: View, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Admit a routed request: None to run the view, or the response that answers it."""
        meta = request.META

        def body(settings: Settings) -> bytes | Response:
            limit = _body_limit(settings)
            if limit < settings.max_body_size:  # Django keeps no more in memory: 413 above it
                settings = dataclasses.replace(settings, max_body_size=limit)
            length = meta.get("CONTENT_LENGTH") or ""
            return body_within(settings, length, lambda: _cached_body(request))

        def user() -> object:
            return self.user_of(lambda: _user(request), "Loading request.user")

        admitted = self.admit((request, view), meta, body=body, user=user)
        if isinstance(admitted, Running):
            setattr(request, _RUNNING, admitted)
            return None
        return None if admitted is None else _django_response(admitted)


def _mark(request: Request, view: View | None) -> RouteSettings | Unmarked | None:
    """Return the mark of `view`, or of the view the request's path resolves to."""
    if view is None:
        try:
            view = resolve(request.path_info, getattr(request, "urlconf", None)).func
        except Resolver404:  # Django answers 404 itself
            return UNMARKED
    return view_mark(view)


def _body_limit(settings: Settings) -> int:
    """Return the most body bytes a keyed request may carry: the route's `max_body_size`, or
    Django's `DATA_UPLOAD_MAX_MEMORY_SIZE` if smaller (`request.body` refuses more)."""
    memory: int | None = getattr(django_settings, "DATA_UPLOAD_MAX_MEMORY_SIZE", None)
    return settings.max_body_size if memory is None else min(memory, settings.max_body_size)


def _keep_body(request: Request, settings: Settings | None) -> None:
    """Read a covered keyed request's body into Django's cache, within its route's limit,
    before any middleware can parse it as a form and consume it (B12)."""
    if settings is None:
        return
    length = request.META.get("CONTENT_LENGTH") or "0"
    if length.isdigit() and int(length) <= _body_limit(settings):
        with contextlib.suppress(RawPostDataException):  # read already: `process_view` says so
            request.body  # noqa: B018 - cached by Django, for the fingerprint later


def _cached_body(request: Request) -> bytes | None:
    """Return the request's body; None if a form parser consumed it before it was cached."""
    try:
        body: bytes = request.body
    except RawPostDataException:
        return None
    return body


def _take(request: Request) -> Running | None:
    running: Running | None = getattr(request, _RUNNING, None)
    if running is not None:
        delattr(request, _RUNNING)
    return running


def _user(request: Request) -> object:
    """Return `request.user` itself: AuthenticationMiddleware sets a lazy proxy, whose type
    would otherwise name every user's class in the principal (B8)."""
    user = getattr(request, "user", None)
    if isinstance(user, LazyObject):
        _ = user.__class__  # evaluates it; Django has no public way to unwrap it
        return user._wrapped
    return user


def _finish(running: Running, response: Any) -> Any:
    """Store `response` (or release the claim), as the WSGI middleware does; return it."""
    status: int = response.status_code
    headers: list[Header] = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.items()
    ]
    if not response.streaming:
        running.complete(status, headers, response.content)
    elif getattr(response, "is_async", False):  # an async iterator: not captured here
        running.omit(status, headers)
    else:  # Django closes the original iterator itself, on `response.close()`
        body = running.stream(status, headers, iter(response.streaming_content))
        response.streaming_content = [body] if isinstance(body, bytes) else body
    return response


def _django_response(answer: Response) -> Any:
    """Return a replay or a problem as a Django response, with exactly its headers."""
    response = HttpResponse(answer.body, status=answer.status)
    del response["Content-Type"]
    for name, value in header_lines(answer):
        response[name] = f"{response[name]}, {value}" if response.has_header(name) else value
    return response


def _check_order() -> None:
    """Refuse a `MIDDLEWARE` where authentication runs after this middleware (B8)."""
    names = list(getattr(django_settings, "MIDDLEWARE", None) or [])
    ours = names.index(_PUBLIC_NAME) if _PUBLIC_NAME in names else None
    if ours is not None and _AUTHENTICATION in names[ours:]:
        raise ImproperlyConfigured(
            f"List {_PUBLIC_NAME} after {_AUTHENTICATION} in MIDDLEWARE: it needs "
            "request.user to know who the caller is."
        )
