"""Django's APPEND_SLASH redirect is not the key's outcome, under the application wrappers (B18).

With `CommonMiddleware` and `APPEND_SLASH`, Django answers a POST to `/payments` with 301 to
`/payments/` when only the slashed path has a view; nothing runs. Stored under the key, the
redirect would use it up: the corrected request, another request-target, would get 422
key-mismatch for as long as the key lives, and never run. As with the trailing-slash redirects
of Starlette and Flask, such a request is not covered. `get_wsgi_application` runs on wsgiref,
`get_asgi_application` on uvicorn, with this module as the URLconf.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import override_settings
from django.urls import path

from retrysafe.integrations.django import get_asgi_application, get_wsgi_application
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.integrations import django_project  # noqa: F401 - configures Django
from tests.integrations.conftest import CALLER
from tests.integrations.servers import AsgiServer, WsgiServer

RUNS: list[int] = []


def payments(request: HttpRequest) -> HttpResponse:
    """An unmarked view at a slashed path: count the call."""
    RUNS.append(1)
    return JsonResponse({"n": len(RUNS)}, status=201)


urlpatterns = [path("payments/", payments)]


@pytest.fixture(params=["wsgi", "asgi"])
def url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The project, with CommonMiddleware and APPEND_SLASH, behind a wrapper, served."""
    RUNS.clear()
    common = ["django.middleware.common.CommonMiddleware"]
    with override_settings(MIDDLEWARE=common, APPEND_SLASH=True, ROOT_URLCONF=__name__):
        server: Any = (
            WsgiServer(get_wsgi_application(store=MemoryStore(), routes={}))
            if request.param == "wsgi"
            else AsgiServer(get_asgi_application(store=AsyncMemoryStore(), routes={}))
        )
        try:
            yield server.url
        finally:
            server.stop()


def test_b18_the_append_slash_redirect_is_answered_not_stored(url: str) -> None:
    """The 301 is answered each time and stored never; the slashed request then runs once
    under the same key, and its retry replays."""
    headers = {"Idempotency-Key": "k", **CALLER}
    with httpx.Client(base_url=url, timeout=15, headers=headers) as client:
        redirects = [client.post("/payments", json={"a": 1}) for _ in range(2)]
        first = client.post("/payments/", json={"a": 1})
        again = client.post("/payments/", json={"a": 1})
    for redirect in redirects:
        assert redirect.status_code == 301
        assert redirect.headers["location"] == "/payments/"
        assert "idempotent-replayed" not in redirect.headers
    assert (first.status_code, first.json()) == (201, {"n": 1})
    assert (again.status_code, again.json()) == (201, {"n": 1})
    assert again.headers["idempotent-replayed"] == "true"
    assert RUNS == [1]
