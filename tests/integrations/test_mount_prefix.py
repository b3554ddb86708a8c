"""Each integration's path patterns hold under a mount prefix (B6, B10).

Patterns for unmarked routes (`routes=`) name the path as the framework routes it, without the
mount prefix (the ASGI `root_path`, the WSGI `SCRIPT_NAME`), as the framework's own routes
do; patterns written for the whole path, prefix included, still decide where the routed path
matches only the catch-all. Each app of `apps.py` runs mounted at `/api` on a real server:
the ASGI ones inside Starlette's `Mount` on uvicorn, the WSGI ones inside Werkzeug's
`DispatcherMiddleware` on wsgiref. Django's native middleware runs under its test client,
with the prefix in `SCRIPT_NAME`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from starlette.applications import Starlette
from starlette.routing import Mount
from werkzeug.exceptions import NotFound
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from retrysafe.asgi import RouteSettings
from tests.integrations import django_project
from tests.integrations.apps import ASGI_FRAMEWORKS, BUILDERS, Recorder
from tests.integrations.conftest import CALLER, Running, serving
from tests.integrations.test_routes import is_problem

REQUIRED = RouteSettings(required=True)
PATTERNS = [{"/plain": REQUIRED, "**": None}, {"/api/plain": REQUIRED, "**": None}]
PATTERN_IDS = ["routed-path", "whole-path"]
Routes = Mapping[str, RouteSettings | None]


@pytest.fixture
def mounted() -> Iterator[Callable[[str, Routes], Running]]:
    """A factory: `framework`'s app installed with `routes`, mounted at `/api` and served."""
    with serving() as serve:

        def run(framework: str, routes: Routes) -> Running:
            recorder = Recorder()
            app = BUILDERS[framework](recorder, routes=routes)
            if framework in ASGI_FRAMEWORKS:
                return serve(framework, recorder, Starlette(routes=[Mount("/api", app=app)]))
            return serve(framework, recorder, DispatcherMiddleware(NotFound(), {"/api": app}))

        yield run


@pytest.mark.parametrize("routes", PATTERNS, ids=PATTERN_IDS)
def test_b6_b10_patterns_cover_unmarked_routes_under_a_mount_prefix(
    framework: str, routes: Routes, mounted: Callable[[str, Routes], Running]
) -> None:
    """Under `/api`, the unmarked route a pattern requires asks for a key, runs once per key and
    replays; a marked route keeps its mark."""
    app = mounted(framework, routes)
    assert is_problem(app.post("/api/plain"), 400, "key-required")
    first, again = app.post("/api/plain", "k1"), app.post("/api/plain", "k1")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert app.recorder.calls["/plain"] == 1
    app.post("/api/marked", "k2")
    assert app.post("/api/marked", "k2").headers["idempotent-replayed"] == "true"
    assert app.recorder.calls["/marked"] == 1


def plain(request: HttpRequest) -> HttpResponse:
    """An unmarked view: count the call."""
    django_project.RECORDER.count("/plain")
    return HttpResponse("{}", status=201, content_type="application/json")


urlpatterns = [path("plain", plain)]


@pytest.mark.parametrize("routes", PATTERNS, ids=PATTERN_IDS)
def test_b6_b10_django_native_patterns_hold_under_a_script_name(routes: Routes) -> None:
    """Django's native middleware, the project under `SCRIPT_NAME=/api`: the same."""
    config: dict[str, Any] = {"STORE": "memory://", "ROUTES": routes}
    middleware = ["retrysafe.integrations.django.IdempotencyMiddleware"]
    django_project.RECORDER = Recorder()
    with override_settings(RETRYSAFE=config, MIDDLEWARE=middleware, ROOT_URLCONF=__name__):
        client = Client(raise_request_exception=False, headers=CALLER)

        def post(key: str | None = None) -> Any:
            headers = {} if key is None else {"Idempotency-Key": key}
            return client.post(
                "/plain", {}, "application/json", headers=headers, SCRIPT_NAME="/api"
            )

        refused = post()
        assert refused.status_code == 400
        assert refused.json()["type"].endswith("#key-required")
        first, again = post("k"), post("k")
    assert (first.status_code, again.status_code) == (201, 201)
    assert again["Idempotent-Replayed"] == "true"
    assert django_project.RECORDER.calls["/plain"] == 1
