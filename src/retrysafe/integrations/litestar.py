"""Per-route idempotency settings for Litestar, in each route handler's `opt`.

    from litestar import Litestar, post
    from retrysafe import open_async_store
    from retrysafe.integrations.litestar import IdempotencyPlugin, idempotency

    @post("/payments", opt=idempotency(required=True))
    async def create_payment(data: Payment) -> Receipt: ...

    app = Litestar(
        [create_payment],
        on_app_init=[session_auth.on_app_init],          # or middleware=[MyAuthMiddleware]
        plugins=[IdempotencyPlugin(store=open_async_store("sqlite:///idem.db"))],
    )

`idempotency(...)` is `{"idempotency": RouteSettings(...)}`; writing that dict yourself, or
setting it on a `Router` or `Controller` (Litestar merges `opt` down the layers, closest wins),
works the same.

Where the middleware runs decides who the caller is (B8): the scope of a keyed request is
`scope["user"]`, which Litestar's authentication middleware sets, only if the idempotency
middleware runs after it:

- `IdempotencyPlugin` appends the middleware to the end of the app's middleware, after the
  security backends (`SessionAuth`, `JWTAuth`, which put theirs first) and after the app's own
  `middleware=[...]`; it reads the handler Litestar routed to, and drains held outcomes at
  shutdown. `idempotency_middleware(...)` is the same middleware, to place yourself (after
  the authentication middleware of a router, say).
- `install` puts the middleware in front of everything the app does for a request, before its
  middleware: it never sees `scope["user"]`, so scopes come from the credential header alone.
  It refuses an app with an authentication middleware (unless a `scope_function` decides
  scopes); use the plugin there. It returns the app, so `litestar --app module:app` works.

Both describe the handlers they guard (marked, or matched by a pattern) in the OpenAPI schema:
the `Idempotency-Key` header, the replay header, the problem+json answers (400, 409, 413, ...).
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, Unpack

from retrysafe._errors import ConfigurationError
from retrysafe._flow import Counters
from retrysafe._flow.observing import Observation
from retrysafe._http import KEY_HEADER, RouteSettings, Settings, SettingsOptions
from retrysafe._http.routing import RoutePath
from retrysafe.asgi import ASGIApp, IdempotencyMiddleware, Receive, Scope, Send
from retrysafe.integrations._openapi import PROBLEM_SCHEMA, describe_operation, documented_route
from retrysafe.integrations._routes import (
    UNMARKED,
    PathPatterns,
    RouteOptions,
    Unmarked,
    framework_imports,
    merge,
    route_from_options,
    unbound,
)
from retrysafe.observe import Observer
from retrysafe.stores.base import AsyncStore

with framework_imports(__name__, "Litestar"):
    from litestar import Litestar
    from litestar.config.app import AppConfig
    from litestar.exceptions import HTTPException
    from litestar.middleware import AbstractAuthenticationMiddleware, DefineMiddleware
    from litestar.openapi.spec import Operation
    from litestar.plugins import InitPluginProtocol, ReceiveRoutePlugin
    from litestar.routes import BaseRoute, HTTPRoute
    from litestar.utils.path import normalize_path

__all__ = [
    "OPT_KEY",
    "STATE_KEY",
    "IdempotencyPlugin",
    "LitestarRoutes",
    "RouteSettings",
    "idempotency",
    "idempotency_middleware",
    "install",
]

OPT_KEY: Final = "idempotency"
"""The key of a handler's `opt` that holds its `RouteSettings` (or None: not covered)."""
STATE_KEY: Final = "retrysafe"
"""The key of `app.state` that holds the middleware `install` added (`counters`, ...)."""


def idempotency(
    *, exempt: bool = False, **options: Unpack[RouteOptions]
) -> dict[str, RouteSettings | None]:
    """Return the `opt` of a route handler, router or controller with these settings.

    Args:
        exempt: the routes are never tracked, whatever the path patterns say.
        options: `RouteSettings` fields: `required=True`, `retention=3600`, `wait=0`, ...
    """
    return {OPT_KEY: route_from_options(exempt=exempt, options=options)}


def _mark_of(handler: Any) -> RouteSettings | Unmarked | None:
    opt = getattr(handler, "opt", None) or {}
    if OPT_KEY not in opt:
        return UNMARKED
    value = opt[OPT_KEY]
    if value is None or isinstance(value, RouteSettings):
        return value
    raise TypeError(f"opt[{OPT_KEY!r}] must be a RouteSettings or None, not {value!r}.")


class LitestarRoutes:
    """The `route_settings` hook for a Litestar app: the `opt` of the handler a request goes to.

    Args:
        app: the Litestar app; None when the middleware runs inside Litestar's middleware
            stack, where the routed handler is in the scope.
        routes: path patterns for handlers without the option.
    """

    def __init__(
        self,
        app: Litestar | None = None,
        *,
        routes: Mapping[str, RouteSettings | None] | None = None,
    ) -> None:
        self._app = app
        self._patterns = PathPatterns(routes)

    def __call__(self, scope: Scope) -> RouteSettings | None:
        """Return the settings of the handler `scope` goes to (None: not covered)."""
        handler = scope.get("route_handler")
        whole: str = scope["path"]
        root_path = scope.get("root_path", "")
        path = whole.split(root_path, maxsplit=1)[-1] if root_path else whole  # as Litestar
        if handler is None and self._app is not None:
            try:
                # Litestar's router memoises this lookup (an LRU of 1024 paths).
                handler = self._app.asgi_router.handle_routing(
                    path=normalize_path(path), method=scope["method"]
                )[1]
            except HTTPException:  # not found, method not allowed: Litestar answers it
                handler = None
        mark = UNMARKED if handler is None else _mark_of(handler)
        return merge(self._patterns.for_path(RoutePath(path or "/", whole)), mark)

    def describe(self, route: BaseRoute, settings: Settings) -> None:
        """Make the OpenAPI operations of `route`'s handlers describe what guards them.

        Args:
            route: a route of the app; only HTTP routes are described.
            settings: the middleware's settings, which a handler's mark and pattern override.
        """
        if not isinstance(route, HTTPRoute):
            return
        pattern = self._patterns.match(route.path_format)
        for handler in route.route_handlers:
            chosen = documented_route(settings, pattern, _mark_of(handler))
            if chosen is not None and set(handler.http_methods) & set(chosen.methods):
                # Every method of a handler shares its operation class: one with methods the
                # settings do not cover (a rare `@route`) is described for all of them.
                handler.operation_class = _described(handler.operation_class, chosen)


def install(
    app: Litestar,
    *,
    store: AsyncStore,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] = (),
    **options: Unpack[SettingsOptions],
) -> Litestar:
    """Put the idempotency middleware in front of what Litestar `app` does for each request.

    Returns `app` itself (serve it, and `litestar --app module:app` works); its
    `app.state[STATE_KEY]` is the middleware, whose `settings`, `observation` (the observers)
    and `counters` (what it did) tell what it is doing. Held outcomes are stored at shutdown.
    The middleware runs before Litestar's own, so it cannot see `scope["user"]`: for an app
    with authentication, use `IdempotencyPlugin`.

    `store` is an async store (`retrysafe.open_async_store(url)`), `routes` path patterns for
    handlers without the option, `observers` who to tell what it does (`retrysafe.observe`),
    `options` the middleware's settings (`wait=0`, ...). Raises `ConfigurationError` when
    `app` has an authentication middleware and no `scope_function`.
    """
    authentication = _authentication_of(app)
    if authentication is not None and options.get("scope_function") is None:
        raise ConfigurationError(
            f"install() wraps the app before {authentication} runs, so it cannot see the "
            "authenticated user (scope['user']). Use plugins=[IdempotencyPlugin(store=...)], "
            "which runs after it."
        )
    hook = LitestarRoutes(app, routes=routes)
    middleware = IdempotencyMiddleware(
        app.asgi_handler,  # type: ignore[arg-type]  # Litestar's ASGI types are TypedDicts
        store=store,
        route_settings=hook,
        observers=observers,
        **options,
    )
    # Inside Litestar's own entry point: the app stays the app, its lifespan its own.
    app.asgi_handler = middleware  # type: ignore[assignment]  # the same ASGI shape
    app.state[STATE_KEY] = middleware
    app.on_shutdown.append(_drainer(middleware))
    for route in app.routes:
        hook.describe(route, middleware.settings)
    return app


def idempotency_middleware(
    *,
    store: AsyncStore,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] = (),
    **options: Unpack[SettingsOptions],
) -> DefineMiddleware:
    """Return the middleware for Litestar's `middleware=[...]`, which runs after routing.

    List it after the authentication middleware, so the scope is the user (B8). To reach its
    `counters`, use `IdempotencyPlugin`, which holds them.

    Args:
        store: where records live (`retrysafe.open_async_store(url)`).
        routes: path patterns for handlers without the option.
        observers: who to tell what the middleware does (`retrysafe.observe`).
        options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).
    """
    return _define(_shared(store, LitestarRoutes(routes=routes), observers, options))


class IdempotencyPlugin(InitPluginProtocol, ReceiveRoutePlugin):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry, scoped to
    the user Litestar's authentication found: `Litestar(..., plugins=[IdempotencyPlugin(...)])`.

    The middleware goes last in the app's middleware, after authentication; held outcomes are
    stored at shutdown (B40). The routes it guards are described in the OpenAPI schema.

    Args:
        store: where records live (`retrysafe.open_async_store(url)`).
        routes: path patterns for handlers without the option.
        observers: who to tell what the middleware does (`retrysafe.observe`); the plugin's
            `observation` holds them.
        options: the middleware's settings (`wait=0`, `anonymous="shared"`, ...).
    """

    __slots__ = ("_middleware", "_routes")

    def __init__(
        self,
        *,
        store: AsyncStore,
        routes: Mapping[str, RouteSettings | None] | None = None,
        observers: Sequence[Observer] = (),
        **options: Unpack[SettingsOptions],
    ) -> None:
        self._routes = LitestarRoutes(routes=routes)
        self._middleware = _shared(store, self._routes, observers, options)

    @property
    def counters(self) -> Counters:
        """What the middleware did: executions, replays, and failures to store (B19)."""
        return self._middleware.counters

    @property
    def observation(self) -> Observation:
        """The observers, with the face's name (`retrysafe.observe`)."""
        return self._middleware.observation

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Append the middleware to the app's, and drain held outcomes at shutdown."""
        app_config.middleware.append(_define(self._middleware))
        app_config.on_shutdown.append(_drainer(self._middleware))
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        """Describe the idempotency of `route`'s handlers in their OpenAPI operations."""
        self._routes.describe(route, self._middleware.settings)


def _drainer(middleware: IdempotencyMiddleware) -> Callable[[], Awaitable[None]]:
    """Return the shutdown hook that stores the outcomes `middleware` holds (B19, B40)."""

    async def drain() -> None:
        await middleware.flow.adrain(middleware.flow.drain_timeout)

    return drain


def _shared(
    store: AsyncStore,
    routes: LitestarRoutes,
    observers: Sequence[Observer],
    options: SettingsOptions,
) -> IdempotencyMiddleware:
    """Return the middleware every route's stack shares (one flow, counters, in-flight cap)."""
    return IdempotencyMiddleware(
        unbound,
        store=store,
        route_settings=routes,
        observers=observers,
        **options,
    )


def _define(shared: IdempotencyMiddleware) -> DefineMiddleware:
    """Return a Litestar middleware that puts `shared` in front of each route's app, after
    the route's guards."""

    def bind(app: ASGIApp) -> ASGIApp:
        bound = copy.copy(shared)  # the same settings, flow and counters; this route's app
        bound.app = app
        return _guarded(bound)

    return DefineMiddleware(bind)  # type: ignore[arg-type]  # Litestar's ASGI types are TypedDicts


def _guarded(middleware: IdempotencyMiddleware) -> ASGIApp:
    """Return `middleware` behind its route's guards, for a keyed request it may claim.

    Litestar runs guards in the handler, inside the middleware; a guard's refusal (401, 403)
    would be the key's outcome and replayed after the caller is allowed. Run first, a refusal
    is answered by Litestar and leaves no record (B9); the handler runs the guards again.
    """
    gate = middleware._gate  # where the middleware decides what it tracks

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        handler: Any = scope.get("route_handler") if scope["type"] == "http" else None
        if (
            handler is not None
            and any(name == KEY_HEADER for name, _ in scope["headers"])  # the cheapest first
            and handler.resolve_guards()
            and gate.settings_for(scope, scope["method"], True) is not None
        ):
            request = handler.resolve_request_class()(scope=scope, receive=receive, send=send)
            await handler.authorize_connection(request)
        await middleware(scope, receive, send)

    return guarded


def _authentication_of(app: Litestar) -> str | None:
    """Return the name of an authentication middleware of `app` itself, or None."""
    for middleware in app.middleware:
        target = middleware.middleware if isinstance(middleware, DefineMiddleware) else middleware
        if isinstance(target, type) and (
            issubclass(target, AbstractAuthenticationMiddleware)
            or target.__module__.startswith("litestar.security.")
        ):
            return target.__qualname__
    return None


def _described(base: type[Operation], settings: Settings) -> type[Operation]:
    """Return an operation class like `base` whose schema describes idempotency.

    Litestar builds each operation with its handler's `operation_class`; this one adds the
    description to the operation's schema (`to_schema`), which `/schema/openapi.json`, the
    YAML form and `litestar schema openapi` serve.
    """
    base = getattr(base, "retrysafe_base", base)  # described again: replace, never stack

    class Described(base):  # type: ignore[misc, valid-type]  # a class made at run time
        retrysafe_base = base

        def to_schema(self) -> dict[str, Any]:
            schema: dict[str, Any] = super().to_schema()
            describe_operation(schema, settings, PROBLEM_SCHEMA)
            return schema

    return Described
