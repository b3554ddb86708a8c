"""Per-route idempotency settings for Flask, as a view decorator.

    from flask import Flask
    from retrysafe import open_store
    from retrysafe.integrations.flask import idempotency, install

    app = Flask(__name__)

    @app.post("/payments")
    @idempotency(required=True, retention=3600)
    def create_payment(): ...

    install(app, store=open_store("sqlite:///idempotency.db"))

`install` wraps `app.wsgi_app` in `retrysafe.wsgi.IdempotencyMiddleware` with a hook that
matches the request against `app.url_map` (as Flask will) and reads the view's mark. A
class-based view is marked on the class or on the function `as_view` returns.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, TypeVar, Unpack

try:
    from flask import Flask
    from werkzeug.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("retrysafe.integrations.flask needs Flask: pip install flask") from error

from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe.integrations._routes import (
    UNMARKED,
    PathPatterns,
    RouteOptions,
    Unmarked,
    marked_route,
    merge,
    read_mark,
)
from retrysafe.stores.base import Store
from retrysafe.wsgi import IdempotencyMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["FlaskRoutes", "RouteSettings", "idempotency", "install"]

_T = TypeVar("_T")


def idempotency(*, exempt: bool = False, **options: Unpack[RouteOptions]) -> Callable[[_T], _T]:
    """Mark a view function (or a `View` class) with its idempotency settings.

    The view is returned as it is, so the decorator may go above or below `@app.post`.

    Args:
        exempt: the view is never tracked, whatever the path patterns say.
        options: `RouteSettings` fields: `required=True`, `retention=3600`, `wait=0`, ...
    """
    return marked_route(exempt=exempt, options=options)


def view_mark(view: object) -> RouteSettings | Unmarked | None:
    """Return the mark of a view function, or of the class it was made from (`as_view`)."""
    found = read_mark(view)
    if isinstance(found, Unmarked):
        view_class = getattr(view, "view_class", None)
        if view_class is not None:
            return read_mark(view_class)
    return found


def _path(environ: WSGIEnvironment) -> str:
    raw = (str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))).encode(
        "latin-1"
    )
    return raw.decode("utf-8", "replace")


class FlaskRoutes:
    """The `route_settings` hook for a Flask app: the mark of the view a request goes to.

    Args:
        app: the Flask app whose URL map decides.
        routes: path patterns for views without a mark.
        cache_size: how many routed (method, host, path) to remember.
    """

    def __init__(
        self,
        app: Flask,
        *,
        routes: Mapping[str, RouteSettings | None] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._app = app
        self._patterns = PathPatterns(routes)
        self._cache: dict[Hashable, RouteSettings | None] = {}
        self._cache_size = cache_size

    def __call__(self, environ: WSGIEnvironment) -> RouteSettings | None:
        """Return the settings of the view `environ` goes to (None: not covered)."""
        path = _path(environ)
        key = (environ["REQUEST_METHOD"], environ.get("HTTP_HOST"), path)
        try:
            return self._cache[key]
        except KeyError:
            pass
        mark: RouteSettings | Unmarked | None = UNMARKED
        try:
            adapter = self._app.create_url_adapter(self._app.request_class(environ))
            if adapter is not None:
                endpoint, _ = adapter.match()
                mark = view_mark(self._app.view_functions.get(endpoint))
        except HTTPException:  # not found, method not allowed, redirect: Flask answers it
            pass
        settings = merge(self._patterns.for_path(path), mark)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[key] = settings
        return settings


def install(
    app: Flask,
    *,
    store: Store,
    routes: Mapping[str, RouteSettings | None] | None = None,
    **options: Unpack[SettingsOptions],
) -> IdempotencyMiddleware:
    """Wrap `app.wsgi_app` in the idempotency middleware, with per-route settings.

    Args:
        app: the Flask app.
        store: where records live (`retrysafe.open_store(url)`).
        routes: path patterns for views without a mark.
        options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).

    Returns:
        The middleware (its `counters` tell what it did).
    """
    middleware = IdempotencyMiddleware(
        app.wsgi_app, store=store, route_settings=FlaskRoutes(app, routes=routes), **options
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return middleware
