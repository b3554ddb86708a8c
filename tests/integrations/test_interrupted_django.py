"""A view interrupted while it runs, inside Django's own middleware: its claim is kept (B40).

Django's test client drives the project of `django_project.py`, with the native
`IdempotencyMiddleware` listed and this module as its URLconf; the store is a SQLite file the
test reads beside it. Django turns an `Exception` from a view into a 500 response, but lets a
`KeyboardInterrupt` or `SystemExit` through its handler to the middleware's `__call__`, where
the claim must not be released: the view may have charged before it was interrupted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path

from retrysafe import State
from retrysafe.stores import open_store
from tests.http.conftest import app_records
from tests.integrations import django_project  # noqa: F401 - configures Django
from tests.integrations.conftest import CALLER

RUNS: list[str] = []
"""The view's runs in this test; it raises `RAISED[0]` on its first."""
RAISED: list[type[BaseException]] = [KeyboardInterrupt]


def charge(request: HttpRequest) -> HttpResponse:
    """Count the run; the first one ends in `RAISED[0]`, as if interrupted mid-charge."""
    RUNS.append(request.path)
    if len(RUNS) == 1:
        raise RAISED[0]("the first run ends here")
    return HttpResponse("charged", status=201)


urlpatterns = [path("charge", charge)]
HEADERS = {"Idempotency-Key": "k", **CALLER}


def _project(url: str, raised: type[BaseException]) -> override_settings:
    """This module's project with the native middleware on the store at `url`; the view's
    first run raises `raised`."""
    RUNS.clear()
    RAISED[:] = [raised]
    config = {"STORE": url, "ROUTES": {"/charge": {}}, "WAIT": 0}
    middleware = ["retrysafe.integrations.django.IdempotencyMiddleware"]
    return override_settings(RETRYSAFE=config, MIDDLEWARE=middleware, ROOT_URLCONF=__name__)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_b40_a_django_view_interrupted_keeps_its_claim(
    interrupt: type[BaseException], tmp_path: Path
) -> None:
    """Ctrl+C or a worker's `SystemExit` in the view: the outcome is unknown, so the record
    stays in flight, and a retry is refused as in flight (409) without running the view."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with _project(url, interrupt):
        client = Client(raise_request_exception=True)
        with pytest.raises(interrupt):
            client.post("/charge", headers=HEADERS)
        store = open_store(url)
        try:
            (record,) = app_records(store.list_records())
        finally:
            store.close()
        assert record.state is State.IN_FLIGHT
        retried = client.post("/charge", headers=HEADERS)
    assert retried.status_code == 409
    assert retried["Content-Type"] == "application/problem+json"
    assert RUNS == ["/charge"]


def test_b18_a_django_view_that_raises_releases_its_claim(tmp_path: Path) -> None:
    """An exception is the view's own answer, a 500 from Django's handler: not stored, the
    claim released, and a retry runs the view again at once."""
    with _project(f"sqlite:///{tmp_path / 'keys.db'}", RuntimeError):
        client = Client(raise_request_exception=False)
        assert client.post("/charge", headers=HEADERS).status_code == 500
        assert client.post("/charge", headers=HEADERS).status_code == 201
    assert RUNS == ["/charge", "/charge"]
