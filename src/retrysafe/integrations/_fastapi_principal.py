"""The principal of a keyed FastAPI request, named by the app's own dependency (B8).

FastAPI apps authenticate in a dependency (`current_user`, behind `OAuth2PasswordBearer` or an
API-key header), which FastAPI resolves inside the app: after the middleware claimed the key, so
the middleware could only scope by the credential, and a refreshed token made the same user's
retry a new caller. `DependencyPrincipal` resolves that dependency itself, with FastAPI's own
resolver, before the claim, for the route FastAPI will hand the request to (its path
parameters as that route reads them), on the request's head (headers, cookies, path and query:
not its body, read by then but not given to it), once its key and body were found sound. Its
sub-dependencies resolve as in a route, the app's `dependency_overrides` included, and those
with `yield` are closed before the claim.

A dependency that refuses (an `HTTPException` such as the bearer scheme's 401, or an exception
of the app's own that its exception handler answers) names no principal: the request is scoped
as if it had none, and the route, which depends on it too, answers as it would. Where the route
depends on it, one the request's own head does not resolve (a header, cookie, query or path
parameter it reads is missing or malformed: the client's input) is `NoCaller`, refused as a
request with no caller; one that cannot be resolved otherwise (it reads the body) or that
fails is a `ScopeError`, a fault of the server's. Either way the request is refused, never
scoped as if it had no user while the route runs as one. For a route that does not depend on
it (a signup), or a request no route takes, such a failure names no principal: the route has
no user either. Which route a request goes to is found once per (method, host, root path,
path) and remembered.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeAlias

from retrysafe._http import logger
from retrysafe._http.asgi_io import Message, Scope
from retrysafe._http.scope import NoCaller, ScopeError
from retrysafe.integrations._routes import BoundedCache, framework_imports
from retrysafe.integrations.starlette import match_route

with framework_imports(__name__, "FastAPI"):
    from fastapi import Depends, Request
    from fastapi.dependencies.models import Dependant
    from fastapi.dependencies.utils import get_dependant, solve_dependencies
    from starlette.exceptions import HTTPException

    try:  # FastAPI 0.165 and later resolve included routers lazily, behind route contexts.
        from fastapi.routing import iter_route_contexts
    except ImportError:  # pragma: no cover - older FastAPI: included routes are APIRoutes
        iter_route_contexts = None  # type: ignore[assignment]

__all__ = ["DependencyPrincipal", "route_candidates"]

_STACKS: Final = ("fastapi_astack", "fastapi_inner_astack", "fastapi_function_astack")
_CACHE_SIZE: Final = 1024  # routes whose resolution is remembered
_NOT_REFUSALS: Final = (Exception, BaseException, object)  # the handlers of every error (500)
_ERRORS_SHOWN: Final = 3
_CLIENT_INPUT: Final = frozenset({"header", "query", "cookie", "path"})
"""Where a validation error's `loc` starts when it is the client's input (not "body")."""


def route_candidates(routes: Sequence[Any]) -> Sequence[Any]:
    """Return an app's routes with included routers flattened, as FastAPI matches them."""
    if iter_route_contexts is None:  # pragma: no cover - older FastAPI
        return routes
    return list(iter_route_contexts(routes))


@dataclass(frozen=True, slots=True)
class _Resolution:
    """How the dependency resolves for one route."""

    route_dependant: object  # the route's own (None: no FastAPI route), kept alive by the key
    dependant: Dependant  # the dependency's, with the route's path parameters
    required: bool  # the route depends on it: a failure to resolve it refuses the request


_Routed: TypeAlias = tuple[dict[str, Any], _Resolution]
"""What routing adds to a request's scope (`path_params`, `endpoint`, a mount's `root_path`),
and how the dependency resolves for its route."""


class DependencyPrincipal:
    """Resolve `dependency` for a request's scope, as FastAPI resolves it for its route.

    Args:
        app: the FastAPI app (its routes, `dependency_overrides` and exception handlers).
        dependency: a FastAPI dependency that returns the authenticated user.
    """

    def __init__(self, app: Any, dependency: Callable[..., Any]) -> None:
        if not callable(dependency):
            raise TypeError(f"principal must be a FastAPI dependency, not {dependency!r}.")

        def principal(user: Any) -> Any:
            return user

        # Its annotation as an object: this module's annotations are strings, which FastAPI
        # would read in its globals, where `dependency` is not.
        user = Annotated[Any, Depends(dependency)]
        principal.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("user", inspect.Parameter.KEYWORD_ONLY, annotation=user)]
        )
        self._app = app
        self._dependency = dependency
        self._principal = principal
        self._name = getattr(dependency, "__qualname__", repr(dependency))
        self._resolutions: dict[tuple[int, str], _Resolution] = {}
        self._routed = BoundedCache[_Routed](_CACHE_SIZE)
        accepted = inspect.signature(solve_dependencies).parameters
        # FastAPI 0.113 and later ask whether body fields are embedded; there is no body here.
        self._options: dict[str, Any] = (
            {"embed_body_fields": False} if "embed_body_fields" in accepted else {}
        )

    async def __call__(self, scope: Scope) -> object:
        """Return the user the dependency names for this request, or None if it names none.

        Raises:
            NoCaller: the route depends on the dependency, which the request's own head does
                not resolve (a header, cookie, query or path parameter missing or malformed).
            ScopeError: the route depends on the dependency, which cannot be resolved for
                this request otherwise (it reads the body) or failed (not a refusal of the
                app's).
        """
        routed, resolution = self._route(scope)
        async with contextlib.AsyncExitStack() as stack:
            # A copy of the scope holds the exit stacks FastAPI's resolver closes `yield`
            # dependencies with (as a route sets them, by each version's name), not the app's.
            stacks = dict.fromkeys(_STACKS, stack)
            request = Request({**routed, **stacks}, receive=_no_body)
            try:
                solved: Any = await solve_dependencies(
                    request=request,
                    dependant=resolution.dependant,
                    dependency_overrides_provider=self._app,
                    dependency_cache={},
                    async_exit_stack=stack,
                    **self._options,
                )
            except Exception as error:
                if resolution.required and not self._refusal(error):
                    raise ScopeError(
                        f"The principal dependency {self._name} failed "
                        f"({type(error).__name__}), so the caller of this request is unknown."
                    ) from error
                logger.debug("The principal dependency named no user", exc_info=True)
                return None
        # FastAPI 0.112 and earlier return a tuple, (values, errors, ...).
        values, errors = (solved.values, solved.errors) if hasattr(solved, "values") else solved[:2]
        if not errors:
            return values.get("user")
        described = _described(errors)
        if resolution.required and not all(_client_input(error) for error in errors):
            raise ScopeError(
                f"The principal dependency {self._name} could not be resolved for this request "
                f"({described}), so its caller is unknown. It is resolved on the request's head "
                "(headers, cookies, path and query, not the body) and names no user by raising "
                "an HTTPException or returning None."
            )
        logger.debug("The principal dependency named no user: %s", described)
        if resolution.required:  # the client's input (a header missing): no caller, as no user
            raise NoCaller(
                f"The principal dependency {self._name} names no user for this request "
                f"({described}), so its Idempotency-Key has no caller to be kept apart by. "
                "Send what it reads, or send the request without an Idempotency-Key."
            )
        return None

    def _route(self, scope: Scope) -> _Routed:
        """Return `scope` as the route FastAPI hands it to sees it, and how the dependency
        resolves there: the app's routes are walked once per (method, host, root path, path)."""
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        key = (scope["method"], host, scope.get("root_path", ""), scope["path"])
        found = self._routed.get(key)
        if found is None:
            matched = match_route(route_candidates(self._app.routes), scope)
            route, child = (None, scope) if matched is None else matched
            added = {name: value for name, value in child.items() if scope.get(name) is not value}
            found = self._routed.keep(key, (added, self._resolution(route)))
        added, resolution = found
        routed = {**scope, **added}
        if "path_params" in added:  # the dependency's own copy: a remembered one stays as found
            routed["path_params"] = dict(added["path_params"])
        return routed, resolution

    def _resolution(self, route: Any) -> _Resolution:
        """Return how the dependency resolves for `route` (None: no route), remembered."""
        route_dependant = getattr(route, "dependant", None)  # a FastAPI route's (or context's)
        path: str = getattr(route, "path_format", None) or ""
        key = (id(route_dependant), path)
        found = self._resolutions.get(key)
        if found is not None and found.route_dependant is route_dependant:
            return found
        if len(self._resolutions) >= _CACHE_SIZE:
            self._resolutions.clear()
        required = route_dependant is not None and _depends_on(route_dependant, self._dependency)
        dependant = get_dependant(path=path, call=self._principal)
        found = self._resolutions[key] = _Resolution(route_dependant, dependant, required)
        return found

    def _refusal(self, error: Exception) -> bool:
        """Whether `error` is the app refusing the request: an `HTTPException`, or an
        exception its own exception handlers answer (not the catch-all of every error)."""
        if isinstance(error, HTTPException):
            return True
        handlers = getattr(self._app, "exception_handlers", {})
        return any(c in handlers for c in type(error).__mro__ if c not in _NOT_REFUSALS)


def _depends_on(dependant: Any, call: object) -> bool:
    """Whether `dependant`'s tree holds a dependency on `call`."""
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def _client_input(error: object) -> bool:
    """Whether validation `error` is about the client's input: a header, query, cookie or path
    parameter, not the body."""
    where = error.get("loc") if isinstance(error, dict) else None
    return bool(where) and where[0] in _CLIENT_INPUT  # type: ignore[index]


def _described(errors: Sequence[Any]) -> str:
    """Return FastAPI's validation `errors` in a few words: where, and what (never the input)."""
    described = []
    for error in errors[:_ERRORS_SHOWN]:
        found = error if isinstance(error, dict) else {}
        where = " ".join(str(part) for part in found.get("loc", ()))
        what = found.get("msg", "invalid")
        described.append(f"{where}: {what}" if where else str(what))
    more = len(errors) - _ERRORS_SHOWN
    return "; ".join(described) + (f"; and {more} more" if more > 0 else "")


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
