"""Per-route idempotency settings for Starlette apps.

    from retrysafe import open_async_store
    from retrysafe.integrations.starlette import idempotency, install

    @idempotency(required=True, retention=3600)
    async def create_payment(request): ...

    app = Starlette(routes=[Route("/payments", create_payment, methods=["POST"])])
    middleware = install(app, store=open_async_store("sqlite:///idempotency.db"))

`install` adds `retrysafe.asgi.IdempotencyMiddleware` with a `route_settings` hook that finds
the route Starlette will pick (through `Mount`s and `Host`s) and reads the endpoint's mark, and
returns that middleware: its `observation` holds the `observers=`, its `counters` what it did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, Unpack

from retrysafe._http import RouteSettings, SettingsOptions, logger
from retrysafe._http.asgi_io import route_path
from retrysafe.asgi import ASGIApp, IdempotencyMiddleware, Scope
from retrysafe.integrations._routes import (
    UNMARKED,
    Patterns,
    RouteCache,
    Unmarked,
    framework_imports,
    idempotency,
    read_mark,
    unbound,
)
from retrysafe.observe import Observer
from retrysafe.stores.base import AsyncStore

with framework_imports(__name__, "Starlette"):
    from starlette.routing import BaseRoute, Host, Match, Mount

__all__ = [
    "RouteSettings",
    "StarletteRoutes",
    "find_route",
    "idempotency",
    "install",
    "match_route",
]


class Bindable(Protocol):
    """A middleware made before the app it wraps: `add_in_front` sets its `app`."""

    app: ASGIApp


M = TypeVar("M", bound=Bindable)


class HasRoutes(Protocol):
    """An app or router with Starlette routes (Starlette, FastAPI, Router)."""

    @property
    def routes(self) -> Sequence[BaseRoute]:
        """The app's routes, in matching order."""
        ...


def find_route(routes: Sequence[Any], scope: Scope) -> Any | None:
    """Return the route Starlette would hand `scope` to, inside mounts, or None.

    `routes` are Starlette routes, or route contexts that wrap one (`original_route`), as
    FastAPI gives for routes of included routers.
    """
    matched = match_route(routes, scope)
    return None if matched is None else matched[0]


def match_route(routes: Sequence[Any], scope: Scope) -> tuple[Any, Scope] | None:
    """Return the route Starlette would hand `scope` to, inside mounts, with the scope it
    would hand it (`path_params`, `endpoint`, a mount's `root_path`), or None."""
    for route in routes:
        match, child = route.matches(scope)
        if match is Match.FULL:
            scope = {**scope, **child}
            if isinstance(getattr(route, "original_route", route), Mount | Host):
                return match_route(route.routes, scope)
            return route, scope
    return None


class StarletteRoutes:
    """The `route_settings` hook for a Starlette app: the matched endpoint's mark.

    Routes are looked up on the app when a request comes, and each (method, host, path) is
    routed once and remembered (up to `cache_size` of them).

    Args:
        app: the Starlette app (or router) whose routes decide.
        routes: path patterns for unmarked routes, as the middleware's `routes=` takes them.
        cache_size: how many routed requests to remember.
    """

    def __init__(
        self,
        app: HasRoutes,
        *,
        routes: Mapping[str, RouteSettings | None] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._app = app
        self._cache = RouteCache(routes, cache_size)

    def __call__(self, scope: Scope) -> RouteSettings | None:
        """Return the settings of the route `scope` goes to (None: not covered)."""
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        key = (scope["method"], host, scope.get("root_path", ""), scope["path"])
        return self._cache.settings(key, route_path(scope), lambda: self._find_mark(scope))

    def _find_mark(self, scope: Scope) -> RouteSettings | Unmarked | None:
        routes = self.candidates(self._app.routes)
        route = find_route(routes, scope)
        if route is not None:
            return self.mark_of(route)
        if self._redirects_slash(routes, scope):
            return None  # the router answers a redirect, and nothing runs: not the key's outcome
        return UNMARKED

    def _redirects_slash(self, routes: Sequence[Any], scope: Scope) -> bool:
        """Whether the router answers `scope` with its trailing-slash redirect (307): no route
        takes the path, one takes it with the slash added or removed (`redirect_slashes`)."""
        router = getattr(self._app, "router", self._app)
        path: str = scope["path"]
        if not getattr(router, "redirect_slashes", False) or path == "/":
            return False
        other = path.rstrip("/") if path.endswith("/") else path + "/"
        return find_route(routes, {**scope, "path": other}) is not None

    def candidates(self, routes: Sequence[BaseRoute]) -> Sequence[Any]:
        """Return the routes to match, in order (a subclass may flatten them)."""
        return routes

    def mark_of(self, route: Any) -> RouteSettings | Unmarked | None:
        """Return the idempotency mark of `route`: its endpoint's."""
        endpoint: Any = getattr(route, "endpoint", None)
        return UNMARKED if endpoint is None else read_mark(endpoint)

    @classmethod
    def install(
        cls,
        app: Any,
        *,
        store: AsyncStore,
        routes: Mapping[str, RouteSettings | None] | None = None,
        observers: Sequence[Observer] = (),
        **options: Unpack[SettingsOptions],
    ) -> IdempotencyMiddleware:
        """Add the idempotency middleware to `app`, with this class as its per-route hook.

        Args:
            app: the Starlette (or FastAPI) app, before it starts serving.
            store: where records live (`retrysafe.open_async_store(url)`).
            routes: path patterns for routes without a mark.
            observers: who to tell what the middleware does (`retrysafe.observe`), such as
                `PrometheusObserver()`.
            options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).

        Returns:
            The middleware: its `observation` holds the observers, its `counters` tell what
            it did. The app puts it in front of its routes when it builds its middleware
            stack, as it starts serving.
        """
        middleware = IdempotencyMiddleware(
            unbound,
            store=store,
            route_settings=cls(app, routes=routes),
            observers=observers,
            **options,
        )

        add_in_front(app, middleware)
        cls.installed(app, middleware, routes)
        return middleware

    @classmethod
    def installed(cls, app: Any, middleware: IdempotencyMiddleware, routes: Patterns) -> None:
        """Called once `install` has added `middleware` to `app`: nothing more for Starlette;
        a subclass may describe it (FastAPI's OpenAPI)."""


def add_in_front(outer: Any, middleware: M) -> None:
    """Add `middleware` (made around `unbound`) to the Starlette or FastAPI app `outer`: the
    app puts it in front of its routes when it builds its middleware stack, as it first
    serves, and a CORS middleware added before it is warned of."""

    def bind(app: ASGIApp) -> M:  # named `app`: Starlette before 0.41 passes it by name
        middleware.app = app
        warn_if_cors_inside(outer, bind)
        return middleware

    outer.add_middleware(bind)


def warn_if_cors_inside(app: Any, bind: object) -> None:
    """Warn if a CORS middleware runs inside the one `bind` adds to `app`: replays would lack
    its `Access-Control-*` headers, without which a browser cannot read them (B10)."""
    stack = [entry.cls for entry in getattr(app, "user_middleware", ())]
    if bind not in stack:
        return
    inside = [getattr(cls, "__name__", "") for cls in stack[stack.index(bind) + 1 :]]
    if "CORSMiddleware" in inside:
        logger.warning(
            "CORSMiddleware runs inside the idempotency middleware, so replays lack its "
            "Access-Control-* headers and browsers cannot read them: add it after install(...)"
        )


install = StarletteRoutes.install
"""Add the idempotency middleware to a Starlette app, with per-route settings (its marks)."""
