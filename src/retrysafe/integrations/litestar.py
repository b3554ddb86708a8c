"""Per-route idempotency settings for Litestar, in each route handler's `opt`.

    from litestar import Litestar, post
    from retrysafe import open_async_store
    from retrysafe.integrations.litestar import idempotency, install

    @post("/payments", opt=idempotency(required=True))
    async def create_payment(data: Payment) -> Receipt: ...

    app = install(Litestar([create_payment]), store=open_async_store("sqlite:///idem.db"))

`idempotency(...)` is `{"idempotency": RouteSettings(...)}`; writing that dict yourself, or
setting it on a `Router` or `Controller` (Litestar merges `opt` down the layers, closest wins),
works the same. `install` wraps the app in `retrysafe.asgi.IdempotencyMiddleware` with a hook
that asks Litestar's own (cached) router which handler a request goes to; serve what it
returns. Inside Litestar's middleware stack (`middleware=[idempotency_middleware(store=...)]`)
the hook reads the handler Litestar already routed to.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Unpack

from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe.asgi import IdempotencyMiddleware, Scope
from retrysafe.integrations._routes import (
    UNMARKED,
    PathPatterns,
    RouteOptions,
    Unmarked,
    merge,
    missing_framework,
    route_from_options,
)
from retrysafe.stores.base import AsyncStore

try:
    from litestar import Litestar
    from litestar.exceptions import HTTPException
    from litestar.middleware import DefineMiddleware
    from litestar.utils.path import normalize_path
except ImportError as error:  # pragma: no cover - depends on the environment
    raise missing_framework(__name__, "Litestar") from error

__all__ = [
    "OPT_KEY",
    "LitestarRoutes",
    "RouteSettings",
    "idempotency",
    "idempotency_middleware",
    "install",
]

OPT_KEY: Final = "idempotency"
"""The key of a handler's `opt` that holds its `RouteSettings` (or None: not covered)."""


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
        if handler is None and self._app is not None:
            path = scope["path"]
            root_path = scope.get("root_path", "")
            if root_path:
                path = path.split(root_path, maxsplit=1)[-1]
            try:
                # Litestar's router memoises this lookup (an LRU of 1024 paths).
                handler = self._app.asgi_router.handle_routing(
                    path=normalize_path(path), method=scope["method"]
                )[1]
            except HTTPException:  # not found, method not allowed: Litestar answers it
                handler = None
        mark = UNMARKED if handler is None else _mark_of(handler)
        return merge(self._patterns.for_path(scope["path"]), mark)


def install(
    app: Litestar,
    *,
    store: AsyncStore,
    routes: Mapping[str, RouteSettings | None] | None = None,
    **options: Unpack[SettingsOptions],
) -> IdempotencyMiddleware:
    """Return Litestar `app` wrapped in the idempotency middleware, with per-route settings.

    Serve the returned app (`uvicorn module:app`); Litestar's lifespan passes through.

    Args:
        app: the Litestar app.
        store: where records live (`retrysafe.open_async_store(url)`).
        routes: path patterns for handlers without the option.
        options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).
    """
    return IdempotencyMiddleware(
        app,  # type: ignore[arg-type]  # Litestar's ASGI types are narrower TypedDicts
        store=store,
        route_settings=LitestarRoutes(app, routes=routes),
        **options,
    )


def idempotency_middleware(
    *,
    store: AsyncStore,
    routes: Mapping[str, RouteSettings | None] | None = None,
    **options: Unpack[SettingsOptions],
) -> DefineMiddleware:
    """Return the middleware for Litestar's `middleware=[...]`, which runs after routing.

    Args:
        store: where records live (`retrysafe.open_async_store(url)`).
        routes: path patterns for handlers without the option.
        options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).
    """
    return DefineMiddleware(
        IdempotencyMiddleware,  # type: ignore[arg-type]  # Litestar's ASGI types are TypedDicts
        store=store,
        route_settings=LitestarRoutes(routes=routes),
        **options,
    )
