"""Per-route idempotency settings for FastAPI, as a dependency that also documents the header.

    from fastapi import Depends, FastAPI
    from retrysafe import open_async_store
    from retrysafe.integrations.fastapi import idempotency, install

    app = FastAPI()

    @app.post("/payments", dependencies=[Depends(idempotency(required=True))])
    async def create_payment(payment: Payment) -> Receipt: ...

    middleware = install(app, store=open_async_store("sqlite:///idempotency.db"))

The dependency declares the `Idempotency-Key` header (required or optional); used as a
parameter it gives the handler the key, parsed (an sf-string's quotes removed). `install` adds
`retrysafe.asgi.IdempotencyMiddleware` with a hook that finds the route FastAPI will pick and
reads the marks of its dependencies (router-level first, the route's own last: closest wins),
and returns that middleware: its `settings`, its `observation` (the `observers=`) and its
`counters` (what it did). It also completes `app.openapi()`: each route marked or matched by a
pattern shows the header as its settings say, the replay header on its responses, and the
problem+json answers of the middleware (400, 409, 410, 413, 422, 503).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Final, Unpack

from retrysafe._errors import InvalidKeyError
from retrysafe._http import RouteSettings, Settings, SettingsOptions
from retrysafe._keys import KeyPolicy, parse_key
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.integrations._fastapi_principal import DependencyPrincipal, route_candidates
from retrysafe.integrations._openapi import (
    PROBLEM_SCHEMA,
    describe_operation,
    documented_route,
    key_description,
)
from retrysafe.integrations._routes import (
    UNMARKED,
    Patterns,
    RouteOptions,
    Unmarked,
    framework_imports,
    mark,
    merge,
    read_mark,
    route_from_options,
)

with framework_imports(__name__, "FastAPI"):
    from fastapi import Header
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute
    from starlette.routing import BaseRoute

from retrysafe.integrations.starlette import StarletteRoutes
from retrysafe.observe import Observer
from retrysafe.stores.base import AsyncStore

__all__ = ["FastAPIRoutes", "RouteSettings", "document_openapi", "idempotency", "install"]

KEY_HEADER: Final = "Idempotency-Key"
_REQUIRED_HELP: Final = key_description(Settings(required=True))
_OPTIONAL_HELP: Final = key_description(Settings())
# The middleware checks keys by its policy before the route runs; the dependency only unquotes.
_ANY_KEY: Final = KeyPolicy(max_length=sys.maxsize)
_PROBLEM_REF: Final = {"$ref": "#/components/schemas/ProblemDetails"}


def _parsed(value: str) -> str | None:
    """Return the key an `Idempotency-Key` header value carries (B1, B2); None if it is
    malformed. The middleware answers a malformed key with its 400 problem before the route
    runs wherever it tracks the request, so one reaches a route only where it does not (a PUT
    or GET under a router-level dependency, say): there the header is ignored (B5)."""
    try:
        return parse_key([value.encode("latin-1")], _ANY_KEY)
    except (InvalidKeyError, UnicodeEncodeError):
        return None


def idempotency(
    *, exempt: bool = False, **options: Unpack[RouteOptions]
) -> Callable[..., str | None]:
    """Return a dependency that marks its route with these settings and declares the header.

    Use it in `dependencies=[Depends(idempotency(...))]` of a route or router, or as a
    parameter (`key: Annotated[str | None, Depends(idempotency())]`) to get the key: the
    header's sf-string unquoted (`"k-1"` gives `k-1`), or None without the header (or with a
    malformed one, which reaches the route only where the middleware ignores the header, B5).

    Args:
        exempt: the route is never tracked, whatever the path patterns say.
        options: `RouteSettings` fields: `required=True`, `retention=3600`, `wait=0`, ...
    """
    route = route_from_options(exempt=exempt, options=options)
    dependency: Callable[..., str | None]
    if route is None:

        def exempt_route() -> None:
            return None

        dependency = exempt_route
    elif route.required:

        def required_key(
            idempotency_key: Annotated[str, Header(alias=KEY_HEADER, description=_REQUIRED_HELP)],
        ) -> str | None:
            return _parsed(idempotency_key)

        dependency = required_key
    else:

        def optional_key(
            idempotency_key: Annotated[
                str | None, Header(alias=KEY_HEADER, description=_OPTIONAL_HELP)
            ] = None,
        ) -> str | None:
            return None if idempotency_key is None else _parsed(idempotency_key)

        dependency = optional_key
    return mark(dependency, route)


def _dependency_marks(dependant: Dependant) -> RouteSettings | Unmarked | None:
    """Return the marks in `dependant`'s dependency tree merged, the last found closest."""
    found: RouteSettings | Unmarked | None = UNMARKED
    for sub in dependant.dependencies:
        for mark_ in (read_mark(sub.call), _dependency_marks(sub)):
            if not isinstance(mark_, Unmarked):
                found = merge(None if isinstance(found, Unmarked) else found, mark_)
    return found


class FastAPIRoutes(StarletteRoutes):
    """The `route_settings` hook for a FastAPI app: marks of the matched route's dependencies.

    A route's endpoint may also carry a mark from `retrysafe.integrations.starlette`'s
    decorator; it applies over the dependencies' marks.
    """

    def candidates(self, routes: Sequence[BaseRoute]) -> Sequence[Any]:
        """Return the app's routes with included routers flattened, as FastAPI matches them."""
        return route_candidates(routes)

    def mark_of(self, route: Any) -> RouteSettings | Unmarked | None:
        """Return the idempotency mark of `route`: its dependencies', then its endpoint's."""
        endpoint_mark = super().mark_of(route)
        if not isinstance(getattr(route, "original_route", route), APIRoute):
            return endpoint_mark
        dependencies_mark = _dependency_marks(route.dependant)
        if isinstance(dependencies_mark, Unmarked):
            return endpoint_mark
        return merge(dependencies_mark, endpoint_mark)

    def documented(self, settings: Settings) -> Iterator[tuple[str, str, Settings]]:
        """Yield (path, method, settings) of each operation the schema shows as covered.

        Args:
            settings: the middleware's settings, which a route's mark and pattern override.
        """
        for route in self.candidates(self._app.routes):
            if not isinstance(getattr(route, "original_route", route), APIRoute):
                continue
            pattern = self._cache.patterns.match(route.path_format)
            chosen = documented_route(settings, pattern, self.mark_of(route))
            if chosen is not None and route.include_in_schema:
                for method in sorted(set(route.methods) & set(chosen.methods)):
                    yield route.path_format, method.lower(), chosen

    @classmethod
    def installed(cls, app: Any, middleware: IdempotencyMiddleware, routes: Patterns) -> None:
        """Describe the installed middleware in `app.openapi()` (see `document_openapi`)."""
        described = cls(app, routes=routes)
        document_openapi(app, lambda: described.documented(middleware.settings))


def document_openapi(
    app: Any,
    operations: Callable[[], Iterator[tuple[str, str, Settings]]],
    *,
    transactional: bool = False,
) -> None:
    """Make `app.openapi()` describe idempotency on `operations()`: (path, method, settings).

    Wraps the app's current `openapi` (FastAPI's, or one the app set before), as FastAPI's
    "Extending OpenAPI" does; the schema it caches is completed on each call, idempotently.
    `transactional` operations also show the problem of an aborted transaction.
    """
    previous = app.openapi

    def openapi() -> dict[str, Any]:
        schema: dict[str, Any] = previous()
        documented = False
        for path, method, settings in operations():
            operation = schema.get("paths", {}).get(path, {}).get(method)
            if operation is not None:
                describe_operation(operation, settings, _PROBLEM_REF, transactional=transactional)
                documented = True
        if documented:
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.setdefault("ProblemDetails", copy.deepcopy(PROBLEM_SCHEMA))
        return schema

    app.openapi = openapi


def install(
    app: Any,
    *,
    store: AsyncStore,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] = (),
    principal: Callable[..., Any] | None = None,
    **options: Unpack[SettingsOptions],
) -> IdempotencyMiddleware:
    """Add the idempotency middleware to a FastAPI app, with per-route settings (its
    dependencies'); see `retrysafe.integrations.starlette.install` for the other arguments.

    Args:
        principal: the app's dependency that returns the authenticated user (`current_user`):
            a keyed request's scope is that user (B8), so a refreshed token keeps it. FastAPI
            resolves it before the claim, for the request's route (its path parameters too),
            on the request's head (not its body); where it refuses (401) or there is none,
            the scope is the credential header's; where the route depends on it and it
            cannot be resolved, the request gets the 400 `scope-missing` problem (a header,
            cookie, query or path parameter it reads is missing or malformed) or the 500
            `scope-unresolved` one (it reads the body, or failed).
    """
    middleware = FastAPIRoutes.install(
        app, store=store, routes=routes, observers=observers, **options
    )
    if principal is not None:
        middleware.principal = DependencyPrincipal(app, principal)
    return middleware
