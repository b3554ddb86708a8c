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

from collections.abc import Mapping
from typing import TYPE_CHECKING, Unpack

from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe.integrations._routes import (
    UNMARKED,
    RouteCache,
    Unmarked,
    idempotency,
    missing_framework,
    view_mark,
)
from retrysafe.stores.base import Store
from retrysafe.wsgi import IdempotencyMiddleware

try:
    from flask import Flask
    from werkzeug.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise missing_framework(__name__, "Flask") from error

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["FlaskRoutes", "RouteSettings", "idempotency", "install"]


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
        self._cache = RouteCache(routes, cache_size)

    def __call__(self, environ: WSGIEnvironment) -> RouteSettings | None:
        """Return the settings of the view `environ` goes to (None: not covered)."""
        path = _path(environ)
        key = (environ["REQUEST_METHOD"], environ.get("HTTP_HOST"), path)
        return self._cache.settings(key, path, lambda: self._find_mark(environ))

    def _find_mark(self, environ: WSGIEnvironment) -> RouteSettings | Unmarked | None:
        try:
            adapter = self._app.create_url_adapter(self._app.request_class(environ))
            if adapter is not None:
                endpoint, _ = adapter.match()
                return view_mark(self._app.view_functions.get(endpoint))
        except HTTPException:  # not found, method not allowed, redirect: Flask answers it
            pass
        return UNMARKED


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
