"""Per-route idempotency settings for FastAPI, as a dependency that also documents the header.

    from fastapi import Depends, FastAPI
    from retrysafe import open_async_store
    from retrysafe.integrations.fastapi import idempotency, install

    app = FastAPI()

    @app.post("/payments", dependencies=[Depends(idempotency(required=True))])
    async def create_payment(payment: Payment) -> Receipt: ...

    middleware = install(app, store=open_async_store("sqlite:///idempotency.db"))

The dependency declares the `Idempotency-Key` header, so the OpenAPI schema shows it (required
or optional); used as a parameter it gives the handler the raw header value. `install` adds
`retrysafe.asgi.IdempotencyMiddleware` with a hook that finds the route FastAPI will pick and
reads the marks of its dependencies (router-level first, the route's own last: closest wins),
and returns that middleware: its `observation` holds the `observers=`, its `counters` what it did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, Unpack

from retrysafe._http import RouteSettings
from retrysafe.integrations._routes import (
    UNMARKED,
    RouteOptions,
    Unmarked,
    mark,
    merge,
    missing_framework,
    read_mark,
    route_from_options,
)

try:
    from fastapi import Header
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRoute
    from starlette.routing import BaseRoute

    try:  # FastAPI 0.165 and later resolve included routers lazily, behind route contexts.
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI: included routes are APIRoutes
        iter_route_contexts = None  # type: ignore[assignment]
except ImportError as error:  # pragma: no cover - depends on the environment
    raise missing_framework(__name__, "FastAPI") from error

from retrysafe.integrations.starlette import StarletteRoutes

__all__ = ["FastAPIRoutes", "RouteSettings", "idempotency", "install"]

KEY_HEADER: Final = "Idempotency-Key"
_REQUIRED_HELP: Final = (
    "Required. A unique value per operation (a UUID); send the same value when retrying, and "
    "the operation runs once: a retry gets the first response again, marked "
    "`Idempotent-Replayed: true`."
)
_OPTIONAL_HELP: Final = (
    "Optional. A unique value per operation (a UUID); send the same value when retrying, and "
    "the operation runs once: a retry gets the first response again, marked "
    "`Idempotent-Replayed: true`."
)


def idempotency(
    *, exempt: bool = False, **options: Unpack[RouteOptions]
) -> Callable[..., str | None]:
    """Return a dependency that marks its route with these settings and declares the header.

    Use it in `dependencies=[Depends(idempotency(...))]` of a route or router, or as a
    parameter (`key: Annotated[str | None, Depends(idempotency())]`) to get the header value.

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
        ) -> str:
            return idempotency_key

        dependency = required_key
    else:

        def optional_key(
            idempotency_key: Annotated[
                str | None, Header(alias=KEY_HEADER, description=_OPTIONAL_HELP)
            ] = None,
        ) -> str | None:
            return idempotency_key

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
        if iter_route_contexts is None:  # pragma: no cover - older FastAPI
            return routes
        return list(iter_route_contexts(routes))

    def mark_of(self, route: Any) -> RouteSettings | Unmarked | None:
        """Return the idempotency mark of `route`: its dependencies', then its endpoint's."""
        endpoint_mark = super().mark_of(route)
        if not isinstance(getattr(route, "original_route", route), APIRoute):
            return endpoint_mark
        dependencies_mark = _dependency_marks(route.dependant)
        if isinstance(dependencies_mark, Unmarked):
            return endpoint_mark
        return merge(dependencies_mark, endpoint_mark)


install = FastAPIRoutes.install
"""Add the idempotency middleware to a FastAPI app, with per-route settings (its dependencies')."""
