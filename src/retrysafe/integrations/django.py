"""Idempotency for Django: a middleware class, a view decorator and a `RETRYSAFE` settings entry.

    # settings.py
    MIDDLEWARE = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "retrysafe.integrations.django.IdempotencyMiddleware",   # after authentication
    ]
    RETRYSAFE = {
        "STORE": "postgresql://app@db/app",        # any store URL (required)
        "ROUTES": {"/health": None},               # path patterns, for unmarked views
        "OBSERVERS": ["myapp.metrics.observer"],   # observers, or their dotted paths
        "ENCRYPTION": Keyring.from_env("KEYS"),    # optional: responses encrypted at rest
        "WAIT": 0,                                 # any middleware setting, in upper case
    }

    # views.py
    from retrysafe.integrations.django import idempotency

    @idempotency(required=True, retention=3600)
    def create_payment(request): ...

`IdempotencyMiddleware` runs the flow inside Django, after authentication: the scope of a
keyed request is `request.user` (B8), so a session or a token refreshed keeps it, and users
authenticated by session cookie get scopes of their own. Use it for any app whose users log in.

`get_wsgi_application()` / `get_asgi_application()` instead wrap Django's handler in the WSGI /
ASGI middleware, before Django runs: it never sees `request.user`, so scopes come from the
credential header (`Authorization`, or `SCOPE_HEADER`) alone. That suits an API whose clients
all send one; its hook resolves the path with `django.urls.resolve` (the `ROOT_URLCONF`). The
ASGI one answers the lifespan protocol that Django's handler refuses, so the outcomes it holds
are stored at shutdown (B40).
Either way a class-based view is marked on the class or on what `as_view()` returns. Use one
of the two, not both.

The wrappers return the middleware: its `observation` holds the observers (`OBSERVERS`, or
`observers=`), its `counters` what it did. Django makes the native middleware itself and keeps
it: what it did reaches the observers listed in `OBSERVERS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Unpack

from retrysafe import asgi, wsgi
from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe._http.asgi_io import run_lifespan
from retrysafe.integrations._django_config import (
    DjangoRoutes,
    configured,
    encryption_from_django,
    settings_from_django,
    store_url,
)
from retrysafe.integrations._django_middleware import IdempotencyMiddleware
from retrysafe.integrations._routes import framework_imports, idempotency
from retrysafe.observe import Observer
from retrysafe.stores import AsyncStore, Store, open_async_store, open_store

# Django ships no type information (django-stubs is a separate project).
with framework_imports(__name__, "Django"):
    from django.core.asgi import get_asgi_application as django_asgi  # type: ignore[import-untyped]
    from django.core.wsgi import get_wsgi_application as django_wsgi  # type: ignore[import-untyped]

__all__ = [
    "DjangoRoutes",
    "IdempotencyMiddleware",
    "RouteSettings",
    "get_asgi_application",
    "get_wsgi_application",
    "idempotency",
    "settings_from_django",
]


def get_wsgi_application(
    *,
    store: Store | None = None,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] | None = None,
    **options: Unpack[SettingsOptions],
) -> wsgi.IdempotencyMiddleware:
    """Return Django's WSGI application wrapped in the idempotency middleware.

    Set-up comes from `settings.RETRYSAFE`; the arguments override it. The middleware runs
    before Django and cannot see `request.user`: see `IdempotencyMiddleware` for apps whose
    users log in.

    Args:
        store: where records live (default: `open_store(RETRYSAFE["STORE"])`).
        routes: path patterns for unmarked views (default: `RETRYSAFE["ROUTES"]`).
        observers: who to tell what the middleware does (`retrysafe.observe`; default:
            `RETRYSAFE["OBSERVERS"]`).
        options: middleware settings, over the ones in `RETRYSAFE`.

    Returns:
        The middleware: its `observation` holds the observers, its `counters` tell what it did.
    """
    application = django_wsgi()
    url, patterns, merged, chosen = configured(routes, options, observers)
    return wsgi.IdempotencyMiddleware(
        application,
        store=store or open_store(store_url(url), encryption=encryption_from_django()),
        route_settings=DjangoRoutes(routes=patterns).for_environ,
        observers=chosen,
        **merged,
    )


def get_asgi_application(
    *,
    store: AsyncStore | None = None,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] | None = None,
    **options: Unpack[SettingsOptions],
) -> asgi.IdempotencyMiddleware:
    """Return Django's ASGI application wrapped in the idempotency middleware: as
    `get_wsgi_application` (the same arguments and defaults), with an async store, by default
    `open_async_store(RETRYSAFE["STORE"])`."""
    url, patterns, merged, chosen = configured(routes, options, observers)
    hook = DjangoRoutes(routes=patterns).for_scope
    chosen_store = store or open_async_store(store_url(url), encryption=encryption_from_django())
    app = _WithLifespan(django_asgi())
    return asgi.IdempotencyMiddleware(
        app, store=chosen_store, route_settings=hook, observers=chosen, **merged
    )


class _WithLifespan:
    """Django's ASGI handler, answering the lifespan protocol that it refuses itself, so that
    the middleware's drain runs at shutdown and held outcomes are stored (B19, B40)."""

    def __init__(self, handler: asgi.ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "lifespan":  # `receive` drains before it yields the shutdown
            await run_lifespan(receive, send, _nothing)
        else:
            await self.handler(scope, receive, send)


async def _nothing() -> None:
    """Django has nothing to close at shutdown."""
