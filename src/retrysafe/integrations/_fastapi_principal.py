"""The principal of a keyed FastAPI request, named by the app's own dependency (B8).

FastAPI apps authenticate in a dependency (`current_user`, behind `OAuth2PasswordBearer` or an
API-key header), which FastAPI resolves inside the app: after the middleware claimed the key, so
the middleware could only scope by the credential, and a refreshed token made the same user's
retry a new caller. `DependencyPrincipal` resolves that dependency itself, with FastAPI's own
resolver, before the claim, on the request's head (headers, cookies, path and query: not its
body, read by then but not given to it), once its key and body were found sound. Its
sub-dependencies resolve as in a route, the app's `dependency_overrides` included, and those
with `yield` are closed before the claim.

A dependency that refuses (an `HTTPException` such as the bearer scheme's 401, an exception of
the app's own that its exception handler answers, or a missing or malformed parameter) names no
principal: the request is scoped as if it had none, and the route, which depends on it too,
answers as it would.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Annotated, Any

from retrysafe._http import logger
from retrysafe._http.asgi_io import Message, Scope
from retrysafe.integrations._routes import framework_imports

with framework_imports(__name__, "FastAPI"):
    from fastapi import Depends, Request
    from fastapi.dependencies.utils import get_dependant, solve_dependencies

__all__ = ["DependencyPrincipal"]

_STACKS = ("fastapi_astack", "fastapi_inner_astack", "fastapi_function_astack")


class DependencyPrincipal:
    """Resolve `dependency` for a request's scope, as FastAPI resolves it for a route.

    Args:
        app: the FastAPI app (its `dependency_overrides` apply).
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
        self._dependant = get_dependant(path="", call=principal)
        accepted = inspect.signature(solve_dependencies).parameters
        # FastAPI 0.113 and later ask whether body fields are embedded; there is no body here.
        self._options: dict[str, Any] = (
            {"embed_body_fields": False} if "embed_body_fields" in accepted else {}
        )

    async def __call__(self, scope: Scope) -> object:
        """Return the user the dependency names for this request, or None if it refuses."""
        async with contextlib.AsyncExitStack() as stack:
            # A copy of the scope holds the exit stacks FastAPI's resolver closes `yield`
            # dependencies with (as a route sets them, by each version's name), not the app's.
            stacks = dict.fromkeys(_STACKS, stack)
            request = Request({**scope, **stacks}, receive=_no_body)
            try:
                solved: Any = await solve_dependencies(
                    request=request,
                    dependant=self._dependant,
                    dependency_overrides_provider=self._app,
                    dependency_cache={},
                    async_exit_stack=stack,
                    **self._options,
                )
            except Exception:  # it refused, its way (any exception an app's handler maps)
                logger.debug("The principal dependency named no user", exc_info=True)
                return None
        # FastAPI 0.112 and earlier return a tuple, (values, errors, ...).
        values, errors = (solved.values, solved.errors) if hasattr(solved, "values") else solved[:2]
        return None if errors else values.get("user")


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}
