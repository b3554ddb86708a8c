"""Idempotency for Flask: an extension, a view decorator, and the WSGI middleware's hook.

    from flask import Flask
    from flask_login import LoginManager
    from retrysafe import open_store
    from retrysafe.integrations.flask import Idempotency, idempotency

    app = Flask(__name__)
    LoginManager(app)

    @app.post("/payments")
    @idempotency(required=True, retention=3600)
    def create_payment(): ...

    Idempotency(app, store=open_store("sqlite:///idempotency.db"))

`Idempotency` runs the flow inside Flask, in its request hooks: the scope of a keyed request is
the logged-in user (B8): Flask-Login's `current_user`, or what `principal=` returns. A session
or a token refreshed keeps it, and users authenticated by session cookie get scopes of their
own. Use it for any app whose users log in. What its arguments leave out comes from the app's
config, as Flask extensions do (arguments win):

    ext = Idempotency()                                  # in extensions.py

    def create_app():
        app = Flask(__name__)
        app.config.from_mapping(RETRYSAFE_STORE="sqlite:///idempotency.db", RETRYSAFE_WAIT=0)
        ext.init_app(app)                                # app.extensions["retrysafe"]
        return app

`RETRYSAFE_<OPTION>` for each option: `RETRYSAFE_STORE` (a store URL), `RETRYSAFE_ROUTES`,
`RETRYSAFE_OBSERVERS`, `RETRYSAFE_PRINCIPAL` and each setting (`RETRYSAFE_REQUIRED`,
`RETRYSAFE_RETENTION`, ...). An unknown `RETRYSAFE_*` key is a `ConfigurationError`.

`install(app, store=...)` instead wraps `app.wsgi_app` in `retrysafe.wsgi.IdempotencyMiddleware`,
before Flask runs: it never sees the user, so scopes come from the credential header
(`Authorization`, or `scope_header=`) alone. Use one of the two, not both.

Either way the view's mark is found by matching the request against `app.url_map`, as Flask
does; a class-based view is marked on the class or on the function `as_view` returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Unpack

from retrysafe._http import RouteSettings, SettingsOptions
from retrysafe.integrations._flask_extension import FlaskIdempotency, FlaskRoutes, Idempotency
from retrysafe.integrations._routes import idempotency
from retrysafe.observe import Observer
from retrysafe.stores.base import Store
from retrysafe.wsgi import IdempotencyMiddleware

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "FlaskIdempotency",
    "FlaskRoutes",
    "Idempotency",
    "RouteSettings",
    "idempotency",
    "install",
]


def install(
    app: Flask,
    *,
    store: Store,
    routes: Mapping[str, RouteSettings | None] | None = None,
    observers: Sequence[Observer] = (),
    **options: Unpack[SettingsOptions],
) -> IdempotencyMiddleware:
    """Wrap `app.wsgi_app` in the idempotency middleware, with per-route settings.

    The middleware runs before Flask and cannot see the logged-in user: see `Idempotency`.

    Args:
        app: the Flask app.
        store: where records live (`retrysafe.open_store(url)`).
        routes: path patterns for views without a mark.
        observers: who to tell what the middleware does (`retrysafe.observe`).
        options: the middleware's settings (`wait=0`, `scope_header="X-API-Key"`, ...).

    Returns:
        The middleware: its `observation` holds the observers, its `counters` tell what it did.
    """
    middleware = IdempotencyMiddleware(
        app.wsgi_app,
        store=store,
        route_settings=FlaskRoutes(app, routes=routes),
        observers=observers,
        **options,
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return middleware
