"""Flask's extension: the idempotency flow inside Flask, with the logged-in user as the caller.

    from flask import Flask
    from flask_login import LoginManager
    from retrysafe import open_store
    from retrysafe.integrations.flask import Idempotency, idempotency

    app = Flask(__name__)
    LoginManager(app)
    Idempotency(app, store=open_store("sqlite:///idempotency.db"))

How it maps onto Flask's request handling:

- `before_request`, first of the app's hooks: a keyed request's body is read into Flask's cache,
  so a hook that parses `request.form` (CSRF) cannot leave it unreadable for the fingerprint.
- `before_request` (the app's, so after the app's hooks registered before it and before every
  blueprint's): admit. A replay or a problem is answered at once and the view does not run;
  an admitted claim waits on `flask.g`.
- `after_request`: the response, as the view made it, is stored (status, allow-listed headers,
  body) or the claim released (B18), as the WSGI middleware does; a streamed body is read up
  to `max_response_size` (B23).
- `teardown_request`: a claim still open (an exception that Flask did not turn into a
  response) is released, so a retry runs again; after an interruption (`KeyboardInterrupt`,
  `SystemExit`) it is kept until its lease ends (B40).

The principal (B8) is what `principal()` returns when given; else Flask-Login's `current_user`
when the app has a `LoginManager`; else none, and the credential header names the scope. A
hook that raises is the 500 scope-unresolved problem (an `HTTPException` is Flask's answer).

Configuration comes from the arguments, else from `app.config` (read by `init_app`, per app):
`RETRYSAFE_<OPTION>` for each option, such as `RETRYSAFE_STORE` (a store URL),
`RETRYSAFE_WAIT`, `RETRYSAFE_REQUIRED`, `RETRYSAFE_ROUTES` or `RETRYSAFE_OBSERVERS`. An unknown
`RETRYSAFE_*` key is a `ConfigurationError`, as a misspelt setting must not be ignored.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Final, Unpack, cast

from retrysafe._errors import ConfigurationError
from retrysafe._http import (
    Header,
    Response,
    RouteSettings,
    Settings,
    SettingsOptions,
    check_content_length,
)
from retrysafe._http.wsgi_io import close_iterable, path_of
from retrysafe.integrations._flask_config import (
    CONFIG_KEYS,
    CONFIG_PREFIX,
    config_of,
    imported,
    observers_of,
    options_from_config,
    routes_of,
    store_from_config,
)
from retrysafe.integrations._inside import InsideMiddleware, Running, body_within, header_lines
from retrysafe.integrations._routes import (
    UNMARKED,
    RouteCache,
    Unmarked,
    framework_imports,
    view_mark,
)
from retrysafe.observe import Observer
from retrysafe.stores import Store

with framework_imports("retrysafe.integrations.flask", "Flask"):
    import flask
    from flask import current_app, g, request
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import RequestRedirect

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "CONFIG_KEYS",
    "CONFIG_PREFIX",
    "EXTENSION",
    "FlaskIdempotency",
    "FlaskRoutes",
    "Idempotency",
    "config_of",
]

EXTENSION: Final = "retrysafe"
"""The key of `app.extensions` that holds an app's `FlaskIdempotency`."""
_RUNNING: Final = "_retrysafe_running"
_FORM_TYPES: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
"""The bodies werkzeug's form parser consumes (others it leaves to `get_data`)."""
_READ_CHUNK: Final = 64 * 1024  # a chunked body is read this much at a time


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
        key = (environ["REQUEST_METHOD"], environ.get("HTTP_HOST"), path.whole, str(path))
        return self._cache.settings(key, path, lambda: self._find_mark(environ))

    def _find_mark(self, environ: WSGIEnvironment) -> RouteSettings | Unmarked | None:
        try:
            adapter = self._app.create_url_adapter(self._app.request_class(environ))
            if adapter is not None:
                endpoint, _ = adapter.match()
                return view_mark(self._app.view_functions.get(endpoint))
        except RequestRedirect:  # the slashed URL (308): nothing runs, not the key's outcome
            return None
        except HTTPException:  # not found, method not allowed: Flask answers it
            pass
        return UNMARKED


class Idempotency:
    """The Flask extension: make POST and PATCH requests with an `Idempotency-Key` safe to
    retry, scoped to the logged-in user.

    `Idempotency(app, store=...)`, or `ext = Idempotency(store=...)` then `ext.init_app(app)`.
    Views are marked with `retrysafe.integrations.flask.idempotency`. Each app's state
    (`init_app`'s `FlaskIdempotency`, also `app.extensions["retrysafe"]`) holds its
    `observation` and `counters`.

    Every argument left out is read from the app's config by `init_app`: `RETRYSAFE_STORE`,
    `RETRYSAFE_PRINCIPAL`, `RETRYSAFE_ROUTES`, `RETRYSAFE_OBSERVERS` and `RETRYSAFE_<OPTION>`
    for each of the middleware's settings (`RETRYSAFE_WAIT`, `RETRYSAFE_REQUIRED`, ...).
    Arguments win over the config.

    Args:
        app: the Flask app, or None to call `init_app` later.
        store: where records live (`retrysafe.open_store(url)`); default: `RETRYSAFE_STORE`,
            a store URL (or a store).
        principal: returns the authenticated user of the current request (`lambda: g.user`),
            for apps that do not use Flask-Login; called in `before_request`. If it raises
            (or Flask-Login's loader does), the request gets the 500 `scope-unresolved`
            problem; `abort(401)` there is Flask's answer. Default: `RETRYSAFE_PRINCIPAL` (the
            function, or its import path).
        routes: path patterns for views without a mark; default: `RETRYSAFE_ROUTES` (each
            pattern's `RouteSettings`, a dict of its fields, or None).
        observers: who to tell what the extension does (`retrysafe.observe`), such as
            `PrometheusObserver()`; every app it is initialised on tells the same ones.
            Default: `RETRYSAFE_OBSERVERS` (observers, or import paths of module attributes).
        options: the middleware's settings (`wait=0`, `anonymous="shared"`, ...); each one
            left out is `RETRYSAFE_<NAME>` when the config has it.
    """

    def __init__(
        self,
        app: flask.Flask | None = None,
        *,
        store: Store | None = None,
        principal: Callable[[], object] | None = None,
        routes: Mapping[str, RouteSettings | None] | None = None,
        observers: Sequence[Observer] | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        self._store = store
        self._principal = principal
        self._routes = routes
        self._observers = None if observers is None else tuple(observers)
        self._options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: flask.Flask) -> FlaskIdempotency:
        """Register the request hooks on `app`; return its state (`app.extensions["retrysafe"]`).

        Register authentication hooks that set the principal (`g.user`) before calling this:
        Flask runs the app's `before_request` functions in the order they were registered.

        Raises:
            ConfigurationError: no store, an unknown `RETRYSAFE_*` key, or an invalid value.
        """
        config = config_of(app)
        options = options_from_config(config, self._options)  # checked before a store opens
        store = self._store if self._store is not None else store_from_config(config.get("store"))
        routes = self._routes if self._routes is not None else routes_of(config.get("routes"))
        principal = self._principal
        if principal is None:
            principal = imported(config.get("principal"), "PRINCIPAL")
            if principal is not None and not callable(principal):
                raise ConfigurationError(f"{CONFIG_PREFIX}PRINCIPAL must be a function.")
        observers = self._observers
        if observers is None:
            observers = observers_of(config.get("observers") or ())
        state = FlaskIdempotency(
            app, store=store, routes=routes, principal=principal, observers=observers, **options
        )
        app.extensions[EXTENSION] = state
        # First of all the app's hooks, so that none parses the form before the body is kept.
        app.before_request_funcs.setdefault(None, []).insert(0, state.buffer_body)
        app.before_request(state.before_request)
        app.after_request(state.after_request)
        app.teardown_request(state.teardown_request)
        return state


class FlaskIdempotency(InsideMiddleware[flask.Flask, "WSGIEnvironment"]):
    """One app's idempotency: its settings, store, flow, `observation` and `counters`; its
    request hooks.

    Args: those of `Idempotency`, for one app.
    """

    refusals = (HTTPException,)  # `abort(401)` in a principal hook: Flask answers it

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

    def buffer_body(self) -> None:
        """Read a keyed request's body into Flask's cache, before any other hook can parse
        it as a form and consume it: the fingerprint needs its bytes (B12), and werkzeug
        parses the form from the cache afterwards. A body whose Content-Length is over the limit
        is left unread, one without a Content-Length (chunked) read up to one byte past it
        (`_raw_body`): `before_request` answers 413 (B22)."""
        environ = request.environ
        method = environ["REQUEST_METHOD"]
        if method not in self._methods or "HTTP_IDEMPOTENCY_KEY" not in environ:
            return
        settings = self._gate.settings_for(environ, method, True)
        length = (environ.get("CONTENT_LENGTH") or "").encode("latin-1")
        if settings is not None and check_content_length(length, settings) is None:
            _raw_body(settings.max_body_size)

    def before_request(self) -> flask.Response | None:
        """Admit the request: None to run the view, or the response that answers it."""
        environ = request.environ

        def body(settings: Settings) -> bytes | Response:
            length = environ.get("CONTENT_LENGTH") or ""
            return body_within(settings, length, lambda: _raw_body(settings.max_body_size))

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
        """Release a claim the response never finished (an unhandled exception); keep it
        after an interruption (B40)."""
        running: Running | None = g.pop(_RUNNING, None)
        if running is not None:
            running.release(error)

    def _user(self) -> object:
        """Return the request's user; a hook that fails is a `ScopeError` (scope-unresolved),
        one that aborts (an `HTTPException`) is Flask's to answer (B8)."""
        if self.principal is not None:
            name = getattr(self.principal, "__qualname__", repr(self.principal))
            return self.user_of(self.principal, f"The principal function {name}")
        if getattr(current_app, "login_manager", None) is None:
            return None
        flask_login = importlib.import_module("flask_login")  # installed: the app uses it
        # The user, not its proxy: loading it runs the app's user or request loader.
        current = flask_login.current_user._get_current_object
        return self.user_of(current, "Loading Flask-Login's current_user")


def _raw_body(limit: int) -> bytes | None:
    """Return the request's raw body, cached; None if a form parser consumed it before it was
    cached (something that ran before `buffer_body`): it cannot be fingerprinted (B12). A body
    without a Content-Length (chunked) is read up to `limit` + 1 bytes, never further: over
    `limit`, `body_within` answers 413 and the rest stays unread, so a keyed upload of any
    size costs the worker no more memory than the limit (B22)."""
    cached: bytes | None = getattr(request, "_cached_data", None)
    if cached is not None:
        return cached
    if "form" in request.__dict__ and request.mimetype in _FORM_TYPES:
        return None
    if not (request.environ.get("CONTENT_LENGTH") or "").isdigit():
        request._cached_data = _read_up_to(request.stream, limit + 1)  # get_data's cache
    return request.get_data(cache=True)


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    """Return the first `size` bytes of `stream`, fewer if it ends first."""
    parts: list[bytes] = []
    left = size
    while left > 0 and (part := stream.read(min(left, _READ_CHUNK))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


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


# The public path, in reprs and pickles (as `retrysafe/__init__.py` does for its names).
for _public in (FlaskIdempotency, FlaskRoutes, Idempotency):
    _public.__module__ = "retrysafe.integrations.flask"
