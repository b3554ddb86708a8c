"""Flask's extension: the idempotency flow inside Flask, with the logged-in user as the caller.

    from flask import Flask
    from flask_login import LoginManager
    from retrysafe import open_store
    from retrysafe.integrations.flask import Idempotency, idempotency

    app = Flask(__name__)
    LoginManager(app)
    Idempotency(app, store=open_store("sqlite:///idempotency.db"))

How it maps onto Flask's request handling:

- `before_request` (the app's, so after the app's hooks registered before it and before every
  blueprint's): admit. A replay or a problem is answered at once and the view does not run;
  an admitted claim waits on `flask.g`.
- `after_request`: the response, as the view made it, is stored (status, allow-listed headers,
  body) or the claim released (B18), as the WSGI middleware does; a streamed body is read up
  to `max_response_size` (B23).
- `teardown_request`: a claim still open (an exception that Flask did not turn into a
  response) is released, so a retry runs again.

The principal (B8) is what `principal()` returns when given; else Flask-Login's `current_user`
when the app has a `LoginManager`; else none, and the credential header names the scope.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Unpack, cast

from retrysafe._errors import ConfigurationError
from retrysafe._http import Header, Response, RouteSettings, Settings, SettingsOptions
from retrysafe._http.wsgi_io import close_iterable, path_of
from retrysafe.integrations._inside import InsideMiddleware, Running, body_within, header_lines
from retrysafe.integrations._routes import (
    UNMARKED,
    RouteCache,
    Unmarked,
    missing_framework,
    view_mark,
)
from retrysafe.observe import Observer
from retrysafe.stores import Store, open_store

try:
    import flask
    from flask import current_app, g, request
    from werkzeug.exceptions import HTTPException
except ImportError as error:  # pragma: no cover - depends on the environment
    raise missing_framework("retrysafe.integrations.flask", "Flask") from error

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["EXTENSION", "FlaskIdempotency", "FlaskRoutes", "Idempotency"]

EXTENSION: Final = "retrysafe"
"""The key of `app.extensions` that holds an app's `FlaskIdempotency`."""
STORE_CONFIG: Final = "RETRYSAFE_STORE"
_RUNNING: Final = "_retrysafe_running"


class FlaskRoutes:
    """The `route_settings` hook for a Flask app: the mark of the view a request goes to.

    Args:
        app: the Flask app whose URL map decides.
        routes: path patterns for views without a mark.
        cache_size: how many routed (method, host, path) to remember.
    """

    def __init__(
        self,
        app: flask.Flask,
        *,
        routes: Mapping[str, RouteSettings | None] | None = None,
        cache_size: int = 1024,
    ) -> None:
        self._app = app
        self._cache = RouteCache(routes, cache_size)

    def __call__(self, environ: WSGIEnvironment) -> RouteSettings | None:
        """Return the settings of the view `environ` goes to (None: not covered)."""
        path = path_of(environ)
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


class Idempotency:
    """The Flask extension: make POST and PATCH requests with an `Idempotency-Key` safe to
    retry, scoped to the logged-in user.

    `Idempotency(app, store=...)`, or `ext = Idempotency(store=...)` then `ext.init_app(app)`.
    Views are marked with `retrysafe.integrations.flask.idempotency`. Each app's state
    (`init_app`'s `FlaskIdempotency`, also `app.extensions["retrysafe"]`) holds its
    `observation` and `counters`.

    Args:
        app: the Flask app, or None to call `init_app` later.
        store: where records live (`retrysafe.open_store(url)`); default: a store opened from
            the app's `RETRYSAFE_STORE` config (a store URL).
        principal: returns the authenticated user of the current request (`lambda: g.user`),
            for apps that do not use Flask-Login; called in `before_request`.
        routes: path patterns for views without a mark.
        observers: who to tell what the extension does (`retrysafe.observe`), such as
            `PrometheusObserver()`; every app it is initialised on tells the same ones.
        options: the middleware's settings (`wait=0`, `anonymous="shared"`, ...).
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        store: Store | None = None,
        principal: Callable[[], object] | None = None,
        routes: Mapping[str, RouteSettings | None] | None = None,
        observers: Sequence[Observer] = (),
        **options: Unpack[SettingsOptions],
    ) -> None:
        self._store = store
        self._principal = principal
        self._routes = routes
        self._observers = tuple(observers)
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> FlaskIdempotency:
        """Register the request hooks on `app`; return its state (`app.extensions["retrysafe"]`).

        Register authentication hooks that set the principal (`g.user`) before calling this:
        Flask runs the app's `before_request` functions in the order they were registered.
        """
        store = self._store
        if store is None:
            url = app.config.get(STORE_CONFIG)
            if not url:
                raise ConfigurationError(f"Pass store=... or set app.config[{STORE_CONFIG!r}].")
            store = open_store(url)
        state = FlaskIdempotency(
            app,
            store=store,
            routes=self._routes,
            principal=self._principal,
            observers=self._observers,
            **self._options,
        )
        app.extensions[EXTENSION] = state
        app.before_request(state.before_request)
        app.after_request(state.after_request)
        app.teardown_request(state.teardown_request)
        return state


class FlaskIdempotency(InsideMiddleware[flask.Flask, "WSGIEnvironment"]):
    """One app's idempotency: its settings, store, flow, `observation` and `counters`; its
    request hooks.

    Args: those of `Idempotency`, for one app.
    """

    def __init__(
        self,
        app: flask.Flask,
        *,
        store: Store,
        routes: Mapping[str, RouteSettings | None] | None = None,
        principal: Callable[[], object] | None = None,
        observers: Sequence[Observer] = (),
        **options: Unpack[SettingsOptions],
    ) -> None:
        super().__init__(
            app,
            store=store,
            route_settings=FlaskRoutes(app, routes=routes),
            observers=observers,
            **options,
        )
        self.principal = principal
        """Returns the current request's user; None: Flask-Login's, if the app has it."""

    def before_request(self) -> flask.Response | None:
        """Admit the request: None to run the view, or the response that answers it."""
        environ = request.environ

        def body(settings: Settings) -> bytes | Response:
            length = environ.get("CONTENT_LENGTH") or ""
            return body_within(settings, length, lambda: request.get_data(cache=True))

        admitted = self.admit(environ, environ, body=body, user=self._user)
        if isinstance(admitted, Running):
            setattr(g, _RUNNING, admitted)
            return None
        return None if admitted is None else _flask_response(admitted)

    def after_request(self, response: flask.Response) -> flask.Response:
        """Store the response of an admitted request (or release its claim); return it."""
        running: Running | None = g.pop(_RUNNING, None)
        return response if running is None else _finish(running, response)

    def teardown_request(self, error: BaseException | None) -> None:
        """Release a claim the response never finished (an unhandled exception)."""
        running: Running | None = g.pop(_RUNNING, None)
        if running is not None:
            running.release()

    def _user(self) -> object:
        if self.principal is not None:
            return self.principal()
        if getattr(current_app, "login_manager", None) is None:
            return None
        flask_login = importlib.import_module("flask_login")  # installed: the app uses it
        return flask_login.current_user._get_current_object()  # the user, not its proxy


def _finish(running: Running, response: flask.Response) -> flask.Response:
    """Store `response` (or release the claim), as the WSGI middleware does; return it."""
    headers: list[Header] = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.headers.items()
    ]
    if not response.is_streamed:
        running.complete(response.status_code, headers, response.get_data())
        return response
    original = cast("Iterable[bytes]", response.response)  # str or bytes: only closed here
    body = running.stream(response.status_code, headers, response.iter_encoded(), original)
    if isinstance(body, bytes):
        response.set_data(body)
        response.call_on_close(lambda: close_iterable(original))
    else:
        response.response = body
    return response


def _flask_response(answer: Response) -> flask.Response:
    """Return a replay or a problem as a Flask response, with exactly its headers."""
    response = flask.Response(answer.body, status=answer.status, headers=header_lines(answer))
    if not any(name == b"content-type" for name, _ in answer.headers):
        del response.headers["Content-Type"]  # not Flask's default text/html
    return response
