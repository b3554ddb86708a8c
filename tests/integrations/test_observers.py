"""Every framework integration takes observers and hands back the object that holds them.

Each integration (`install`, Litestar's plugin, Flask's extension, Django's wrappers, its
`MIDDLEWARE` class with `RETRYSAFE["OBSERVERS"]`) is given a `PrometheusObserver` on a registry
of the test's own, serves its marked routes on a real server, and the counts equal what
happened; the object it handed back holds the observers and the same counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from prometheus_client import CollectorRegistry

from retrysafe.observe import Observer
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.integrations import django_project  # configures Django: the views below
from tests.integrations.apps import FRAMEWORKS, Recorder
from tests.integrations.conftest import CALLER, new_key
from tests.integrations.servers import AsgiServer, WsgiServer
from tests.observe.metrics import (
    SCOPE_SECRET,
    Identities,
    Metrics,
    assert_no_identity_in_labels,
)

DOTTED: Final = Observer()
"""An observer that `RETRYSAFE["OBSERVERS"]` names by its dotted path."""


@dataclass
class Built:
    """An app installed with observers: what to serve, and what the integration handed back
    (None where the framework keeps it: Django's `MIDDLEWARE`)."""

    app: Any
    holder: Any
    face: str
    asgi: bool


Builder = Callable[[Recorder, list[Observer]], Built]


def _created(recorder: Recorder, path: str) -> dict[str, int]:
    return {"n": recorder.count(path)}


def starlette(recorder: Recorder, observers: list[Observer]) -> Built:
    """Starlette: `install(app, ..., observers=...)` returns the middleware."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from retrysafe.integrations.starlette import idempotency, install

    def handler(path: str) -> Any:
        async def endpoint(request: Request) -> JSONResponse:
            return JSONResponse(_created(recorder, path), status_code=201)

        return endpoint

    app = Starlette(
        routes=[
            Route("/required", idempotency(required=True)(handler("/required")), methods=["POST"]),
            Route("/marked", idempotency()(handler("/marked")), methods=["POST"]),
            Route("/plain", handler("/plain"), methods=["POST"]),
            Route("/exempt", idempotency(exempt=True)(handler("/exempt")), methods=["POST"]),
        ]
    )
    holder = install(app, store=AsyncMemoryStore(), observers=observers, scope_secret=SCOPE_SECRET)
    return Built(app, holder, "asgi", asgi=True)


def fastapi(recorder: Recorder, observers: list[Observer]) -> Built:
    """FastAPI: `install(app, ..., observers=...)` returns the middleware."""
    from fastapi import Depends, FastAPI

    from retrysafe.integrations.fastapi import idempotency, install

    app = FastAPI()

    @app.post("/required", status_code=201, dependencies=[Depends(idempotency(required=True))])
    async def required() -> dict[str, int]:
        return _created(recorder, "/required")

    @app.post("/marked", status_code=201, dependencies=[Depends(idempotency())])
    async def marked() -> dict[str, int]:
        return _created(recorder, "/marked")

    @app.post("/plain", status_code=201)
    async def plain() -> dict[str, int]:
        return _created(recorder, "/plain")

    @app.post("/exempt", status_code=201, dependencies=[Depends(idempotency(exempt=True))])
    async def exempt() -> dict[str, int]:
        return _created(recorder, "/exempt")

    holder = install(app, store=AsyncMemoryStore(), observers=observers, scope_secret=SCOPE_SECRET)
    return Built(app, holder, "asgi", asgi=True)


def _litestar_handlers(recorder: Recorder) -> list[Any]:
    from litestar import post

    from retrysafe.integrations.litestar import idempotency

    @post("/required", opt=idempotency(required=True))
    async def required() -> dict[str, int]:
        return _created(recorder, "/required")

    @post("/marked", opt=idempotency())
    async def marked() -> dict[str, int]:
        return _created(recorder, "/marked")

    @post("/plain")
    async def plain() -> dict[str, int]:
        return _created(recorder, "/plain")

    @post("/exempt", opt=idempotency(exempt=True))
    async def exempt() -> dict[str, int]:
        return _created(recorder, "/exempt")

    return [required, marked, plain, exempt]


def litestar(recorder: Recorder, observers: list[Observer]) -> Built:
    """Litestar: `install(app, ..., observers=...)` returns the app, served; the middleware is
    at `app.state[STATE_KEY]`."""
    from litestar import Litestar

    from retrysafe.integrations.litestar import STATE_KEY, install

    app = install(
        Litestar(_litestar_handlers(recorder)),
        store=AsyncMemoryStore(),
        observers=observers,
        scope_secret=SCOPE_SECRET,
    )
    return Built(app, app.state[STATE_KEY], "asgi", asgi=True)


def litestar_plugin(recorder: Recorder, observers: list[Observer]) -> Built:
    """Litestar: `IdempotencyPlugin(..., observers=...)` holds them."""
    from litestar import Litestar

    from retrysafe.integrations.litestar import IdempotencyPlugin

    plugin = IdempotencyPlugin(
        store=AsyncMemoryStore(), observers=observers, scope_secret=SCOPE_SECRET
    )
    app = Litestar(_litestar_handlers(recorder), plugins=[plugin])
    return Built(app, plugin, "asgi", asgi=True)


def _flask_app(recorder: Recorder) -> Any:
    from flask import Flask, Response

    from retrysafe.integrations.flask import idempotency

    app = Flask(__name__)

    def created(path: str) -> Response:
        body = json.dumps(_created(recorder, path))
        return Response(body, status=201, content_type="application/json")

    @app.post("/required")
    @idempotency(required=True)
    def required() -> Response:
        return created("/required")

    @app.post("/marked")
    @idempotency()
    def marked() -> Response:
        return created("/marked")

    @app.post("/plain")
    def plain() -> Response:
        return created("/plain")

    @app.post("/exempt")
    @idempotency(exempt=True)
    def exempt() -> Response:
        return created("/exempt")

    return app


def flask(recorder: Recorder, observers: list[Observer]) -> Built:
    """Flask: `install(app, ..., observers=...)` returns the WSGI middleware."""
    from retrysafe.integrations.flask import install

    app = _flask_app(recorder)
    holder = install(app, store=MemoryStore(), observers=observers, scope_secret=SCOPE_SECRET)
    return Built(app, holder, "wsgi", asgi=False)


def flask_extension(recorder: Recorder, observers: list[Observer]) -> Built:
    """Flask: `Idempotency(..., observers=...)`; `init_app` returns the app's state, which
    is also `app.extensions["retrysafe"]`."""
    from retrysafe.integrations.flask import Idempotency

    app = _flask_app(recorder)
    extension = Idempotency(store=MemoryStore(), observers=observers, scope_secret=SCOPE_SECRET)
    holder = extension.init_app(app)
    assert app.extensions["retrysafe"] is holder
    return Built(app, holder, "wsgi", asgi=False)


def _django_views(recorder: Recorder) -> None:
    django_project.RECORDER = recorder  # where the project's views count their calls


def django_wsgi(recorder: Recorder, observers: list[Observer]) -> Built:
    """Django: `get_wsgi_application(observers=...)` returns the WSGI middleware."""
    from retrysafe.integrations.django import get_wsgi_application

    _django_views(recorder)
    holder = get_wsgi_application(
        store=MemoryStore(), routes={}, observers=observers, scope_secret=SCOPE_SECRET
    )
    return Built(holder, holder, "wsgi", asgi=False)


def django_asgi(recorder: Recorder, observers: list[Observer]) -> Built:
    """Django: `get_asgi_application(observers=...)` returns the ASGI middleware."""
    from retrysafe.integrations.django import get_asgi_application

    _django_views(recorder)
    holder = get_asgi_application(
        store=AsyncMemoryStore(), routes={}, observers=observers, scope_secret=SCOPE_SECRET
    )
    return Built(holder, holder, "asgi", asgi=True)


BUILDERS: Final[dict[str, Builder]] = {
    "starlette": starlette,
    "fastapi": fastapi,
    "litestar": litestar,
    "litestar-plugin": litestar_plugin,
    "flask": flask,
    "flask-extension": flask_extension,
    "django-wsgi": django_wsgi,
    "django-asgi": django_asgi,
}
assert {name.split("-")[0] for name in BUILDERS} == set(FRAMEWORKS)


@dataclass
class Client:
    """Requests to one served app, as the caller."""

    http: httpx.Client

    def post(self, path: str, key: str | None = None, body: object = None) -> httpx.Response:
        """POST JSON `body` (default `{}`) to `path`, with `key` if given."""
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.http.post(path, headers=headers, json={} if body is None else body)


@pytest.fixture
def serve() -> Iterator[Callable[[Any, bool], Client]]:
    """A factory: serve an ASGI (uvicorn) or WSGI (wsgiref) app; stop it afterwards."""
    stops: list[Callable[[], None]] = []

    def start(app: Any, asgi: bool) -> Client:
        server = AsgiServer(app) if asgi else WsgiServer(app)
        http = httpx.Client(base_url=server.url, timeout=15, headers=CALLER)
        stops.extend((server.stop, http.close))
        return Client(http)

    yield start
    for stop in reversed(stops):
        stop()


def exercise(client: Client) -> None:
    """Send what every test below counts: on marked routes an execution, its replay, a
    mismatch, a missing required key and an invalid key; on the others untracked requests."""
    key = new_key()
    assert client.post("/marked", key).status_code == 201
    assert client.post("/marked", key).headers["idempotent-replayed"] == "true"
    assert client.post("/marked", key, {"other": 1}).status_code == 422
    assert client.post("/required").status_code == 400
    assert client.post("/marked", "k" * 256).status_code == 400
    assert client.post("/plain").status_code == 201
    assert client.post("/exempt", new_key()).status_code == 201


EXERCISED: Final = {"execute": 1, "replay": 1, "mismatch": 1, "rejected": 1, "invalid": 1}


@pytest.mark.parametrize("integration", list(BUILDERS))
def test_b10_b13_each_integration_hands_back_what_holds_its_observers(
    integration: str, serve: Callable[[Any, bool], Client]
) -> None:
    """The integration counts under its face what its routes did, and the object it handed
    back holds the observers (`observation`) and the same counts (`counters`)."""
    metrics, identities, recorder = Metrics(CollectorRegistry()), Identities(), Recorder()
    built = BUILDERS[integration](recorder, [metrics.observer, identities])
    assert built.holder.observation.observers == (metrics.observer, identities)
    assert built.holder.observation.face == built.face

    exercise(serve(built.app, built.asgi))

    assert recorder.calls == {"/marked": 1, "/plain": 1, "/exempt": 1}
    assert metrics.faces() == {built.face: 5}
    assert metrics.decisions(built.face) == EXERCISED
    assert metrics.outcomes(built.face) == {"stored": 1}
    assert metrics.store_calls() == {"claim": 3, "complete": 1}
    assert built.holder.counters.executions == 1
    assert built.holder.counters.replays == 1
    assert_no_identity_in_labels(metrics.registry, identities, CALLER["Authorization"])


def test_b10_b13_django_middleware_class_takes_the_observers_from_settings(
    serve: Callable[[Any, bool], Client],
) -> None:
    """Django's `MIDDLEWARE` class reads `RETRYSAFE["OBSERVERS"]` (observers and dotted
    paths) and counts under the face `wsgi`."""
    from django.core.handlers.wsgi import WSGIHandler

    metrics, identities, recorder = Metrics(CollectorRegistry()), Identities(), Recorder()
    _django_views(recorder)
    config = {
        "STORE": "memory://",
        "OBSERVERS": [metrics.observer, identities, f"{__name__}.DOTTED"],
        "SCOPE_SECRET": SCOPE_SECRET,
    }
    middleware = ["retrysafe.integrations.django.IdempotencyMiddleware"]
    with override_settings(RETRYSAFE=config, MIDDLEWARE=middleware):
        exercise(serve(WSGIHandler(), False))

    assert recorder.calls == {"/marked": 1, "/plain": 1, "/exempt": 1}
    assert metrics.faces() == {"wsgi": 5}
    assert metrics.decisions("wsgi") == EXERCISED
    assert metrics.outcomes("wsgi") == {"stored": 1}
    assert_no_identity_in_labels(metrics.registry, identities, CALLER["Authorization"])


def test_django_observers_setting_resolves_dotted_paths_and_arguments_override_it() -> None:
    """`RETRYSAFE["OBSERVERS"]` gives the wrappers their observers, a dotted path naming a
    module attribute; `observers=` replaces them."""
    from retrysafe.integrations.django import get_wsgi_application

    given = Observer()
    config = {"STORE": "memory://", "OBSERVERS": [given, f"{__name__}.DOTTED"]}
    with override_settings(RETRYSAFE=config):
        middleware = get_wsgi_application(store=MemoryStore(), routes={})
        assert middleware.observation.observers == (given, DOTTED)
        replaced = get_wsgi_application(store=MemoryStore(), routes={}, observers=[])
        assert replaced.observation.observers == ()


@pytest.mark.parametrize(
    ("observers", "message"),
    [
        ("retrysafe.observe.Observer", "a list of observers"),
        ([f"{__name__}.Identities"], "is not an observer"),
        ([object()], "is not an observer"),
        (["tests.integrations.no_such_module.OBSERVER"], "OBSERVERS"),
    ],
)
def test_django_observers_setting_refuses_what_is_not_an_observer(
    observers: object, message: str
) -> None:
    """A class, an object that is not an observer, a path that does not import, or a single
    string instead of a list is an `ImproperlyConfigured` naming the setting."""
    from retrysafe.integrations.django import get_wsgi_application

    with (
        override_settings(RETRYSAFE={"STORE": "memory://", "OBSERVERS": observers}),
        pytest.raises(ImproperlyConfigured, match=message),
    ):
        get_wsgi_application(store=MemoryStore(), routes={})
