"""Django's native middleware keeps a keyed request's body for the fingerprint (B12, B22, B24).

`CsrfViewMiddleware`, listed before `IdempotencyMiddleware` as the docs ask, parses a
multipart form in its `process_view`, which consumes the request stream: the body must be
cached first, up to the limit of the route the request goes to. Django's test client drives
the project of `django_project.py`, with this module as its URLconf.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import Client, override_settings
from django.urls import path

from retrysafe.integrations.django import idempotency
from tests.integrations import django_project  # noqa: F401 - configures Django
from tests.integrations.conftest import CALLER

MIB = 1024 * 1024
TOKEN = "A" * 32
RUNS: list[int] = []
"""The size of each upload the view took."""


@idempotency(max_body_size=10 * MIB)
def avatar(request: HttpRequest) -> HttpResponse:
    """Take an upload larger than the global limit allows (1 MiB)."""
    RUNS.append(len(request.FILES["f"].read()))
    return JsonResponse({"size": RUNS[-1]}, status=201)


def read_form_first(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """A middleware that parses the form before the rest of the stack runs."""

    def middleware(request: HttpRequest) -> Any:
        request.POST.get("csrfmiddlewaretoken")
        return get_response(request)

    return middleware


urlpatterns = [path("avatar", avatar)]
_CSRF = "django.middleware.csrf.CsrfViewMiddleware"
_OURS = "retrysafe.integrations.django.IdempotencyMiddleware"


@pytest.fixture
def project() -> Iterator[Callable[..., Client]]:
    """A factory: this module's project with `middleware` listed; a CSRF-checking client."""
    active: list[override_settings] = []

    def make(middleware: list[str], **settings: Any) -> Client:
        RUNS.clear()
        config = {"STORE": "memory://", "WAIT": 0}
        chosen = override_settings(
            RETRYSAFE=config, MIDDLEWARE=middleware, ROOT_URLCONF=__name__, **settings
        )
        chosen.enable()
        active.append(chosen)
        client = Client(enforce_csrf_checks=True, raise_request_exception=False)
        client.cookies["csrftoken"] = TOKEN
        return client

    yield make
    for chosen in reversed(active):
        chosen.disable()


def _upload(client: Client, key: str, content: bytes) -> Any:
    form = {"f": SimpleUploadedFile("a.bin", content), "csrfmiddlewaretoken": TOKEN}
    return client.post("/avatar", form, headers={"Idempotency-Key": key, **CALLER})


def test_b22_a_route_limit_covers_a_multipart_upload_under_csrf(
    project: Callable[..., Client],
) -> None:
    """A 1.5 MiB upload to a route that allows 10 MiB, after CSRF parsed the form: the view
    runs once, a retry replays, and another upload under the key is a mismatch."""
    client = project([_CSRF, _OURS])
    first = _upload(client, "k", b"x" * (3 * MIB // 2))
    assert first.status_code == 201
    assert first.json() == {"size": 3 * MIB // 2}
    replay = _upload(client, "k", b"x" * (3 * MIB // 2))
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    other = _upload(client, "k", b"y" * (3 * MIB // 2))
    assert other.status_code == 422
    assert other["Content-Type"] == "application/problem+json"
    assert RUNS == [3 * MIB // 2]


def test_b22_a_body_over_djangos_memory_limit_gets_the_413_problem(
    project: Callable[..., Client],
) -> None:
    """Django keeps at most `DATA_UPLOAD_MAX_MEMORY_SIZE` in memory: a keyed body above it is
    refused with 413 problem+json naming that limit, whatever the route allows."""
    client = project([_CSRF, _OURS], DATA_UPLOAD_MAX_MEMORY_SIZE=MIB)
    response = _upload(client, "k", b"x" * (3 * MIB // 2))
    assert response.status_code == 413
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("#body-too-large")
    assert str(MIB) in response.json()["detail"]
    assert RUNS == []


def test_b24_a_body_consumed_before_the_middleware_is_a_problem(
    project: Callable[..., Client],
) -> None:
    """A middleware listed before it parses the form first: the body cannot be fingerprinted,
    so the request gets the 500 problem+json, not Django's HTML error page, and nothing runs."""
    client = project([f"{__name__}.read_form_first", _CSRF, _OURS])
    response = _upload(client, "k", b"x" * 1000)
    assert response.status_code == 500
    assert response["Content-Type"] == "application/problem+json"
    assert response["Cache-Control"] == "no-store"
    assert response.json()["type"].endswith("#body-unavailable")
    assert RUNS == []
