"""Django under ASGI drains held outcomes at shutdown (B19, B40).

Django's own ASGI handler refuses the lifespan protocol, so `get_asgi_application()` answers it:
the middleware's drain, which runs on `lifespan.shutdown`, must happen under uvicorn's default
`--lifespan auto`. The store is a SQLite file that the view locks (a real outage), so the
view's outcome is held in the process; the project is `django_project.py` with this module as
its URLconf.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import httpx
import pytest
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from retrysafe import RouteSettings, State
from retrysafe.integrations.django import get_asgi_application
from retrysafe.stores import open_async_store, open_store
from tests.http.conftest import app_records
from tests.integrations import django_project  # noqa: F401 - configures Django
from tests.integrations.conftest import CALLER
from tests.integrations.servers import AsgiServer

LOCKS: list[sqlite3.Connection] = []
"""The view's lock on the store's file, held until the test lets go of it."""
STORE_FILE: list[Path] = []
_LEFT = "still not stored after draining"


def pay(request: HttpRequest) -> HttpResponse:
    """Charge, then lock the store's file: storing the outcome fails, so it is held."""
    lock = sqlite3.connect(STORE_FILE[0], timeout=5, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    LOCKS.append(lock)
    return HttpResponse("paid", status=201)


urlpatterns = [path("pay", pay)]


def test_b40_django_asgi_application_drains_at_lifespan_shutdown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Served with uvicorn's default lifespan mode, the shutdown runs the middleware's drain:
    with the store still locked, the drain logs what it leaves held, and releases nothing."""
    STORE_FILE[:] = [tmp_path / "keys.db"]
    url = f"sqlite:///{STORE_FILE[0]}?timeout=0.2"
    caplog.set_level(logging.WARNING, logger="retrysafe")
    with override_settings(ROOT_URLCONF=__name__):
        middleware = get_asgi_application(
            store=open_async_store(url), routes={"/pay": RouteSettings()}, scope_secret="s" * 32
        )
        middleware.flow.drain_timeout = 0.3
        server = AsgiServer(middleware, lifespan="auto")
        try:
            with httpx.Client(base_url=server.url, headers=CALLER, timeout=15) as client:
                answer = client.post("/pay", headers={"Idempotency-Key": "k1"})
            assert answer.status_code == 201  # the client has its answer (B19)
            assert len(middleware.flow.holdings) == 1
        finally:
            server.stop()
            for lock in LOCKS:
                lock.close()
            LOCKS.clear()
    assert any(_LEFT in record.getMessage() for record in caplog.records)
    store = open_store(f"sqlite:///{STORE_FILE[0]}")
    try:
        (record,) = app_records(store.list_records())
    finally:
        store.close()
    assert record.state is State.IN_FLIGHT  # unknown to the store: kept for its lease (B40)
