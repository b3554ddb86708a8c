"""What each integration adds beyond marks: OpenAPI, Litestar's own stack, Django's settings."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
import pytest

from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.integrations.apps import Recorder, fastapi_app
from tests.integrations.conftest import CALLER, new_key
from tests.integrations.servers import AsgiServer, WsgiServer


def test_fastapi_openapi_schema_shows_the_header() -> None:
    """The dependency documents Idempotency-Key in OpenAPI: required where marked required."""
    schema = fastapi_app(Recorder()).openapi()

    def header(path: str) -> dict[str, Any] | None:
        parameters = schema["paths"][path]["post"].get("parameters", [])
        found = [p for p in parameters if p["in"] == "header" and p["name"] == "Idempotency-Key"]
        return found[0] if found else None

    required, optional = header("/required"), header("/marked")
    assert required is not None
    assert required["required"] is True
    assert optional is not None
    assert optional.get("required", False) is False
    assert "retry" in required["description"]
    assert header("/v1/required") is not None  # from the router's dependencies
    assert header("/plain") is None
    assert header("/exempt") is None


def test_b1_b2_fastapi_dependency_gives_the_handler_the_parsed_key() -> None:
    """Used as a parameter, the dependency hands the handler the key itself: the sf-string
    unquoted, the same key as its bare form."""
    from fastapi import Depends, FastAPI

    from retrysafe.integrations.fastapi import idempotency, install

    app = FastAPI()

    @app.post("/echo")
    async def echo(key: str | None = Depends(idempotency())) -> dict[str, str | None]:
        return {"key": key}

    install(app, store=AsyncMemoryStore())
    server = AsgiServer(app)
    try:
        for sent in ('"k-1"', "k-1"):
            headers = {"Idempotency-Key": sent, **CALLER}
            response = httpx.post(f"{server.url}/echo", headers=headers)
            assert response.json() == {"key": "k-1"}
    finally:
        server.stop()


def test_litestar_middleware_inside_the_app_reads_the_routed_handler() -> None:
    """In Litestar's own middleware list the hook reads the handler Litestar routed to."""
    from litestar import Litestar, post

    from retrysafe.integrations.litestar import idempotency, idempotency_middleware

    recorder = Recorder()

    @post("/required", opt=idempotency(required=True))
    async def required() -> dict[str, int]:
        return {"n": recorder.count("/required")}

    @post("/plain")
    async def plain() -> dict[str, int]:
        return {"n": recorder.count("/plain")}

    app = Litestar([required, plain], middleware=[idempotency_middleware(store=AsyncMemoryStore())])
    server = AsgiServer(app)
    try:
        with httpx.Client(base_url=server.url, headers=CALLER) as client:
            assert client.post("/required").status_code == 400
            assert client.post("/plain").status_code == 201
            key = {"Idempotency-Key": new_key()}
            client.post("/required", headers=key)
            assert client.post("/required", headers=key).headers["idempotent-replayed"] == "true"
        assert recorder.calls == {"/required": 1, "/plain": 1}
    finally:
        server.stop()


def test_django_settings_entry_configures_store_patterns_and_options() -> None:
    """RETRYSAFE in settings gives the store, the path patterns and the options (WAIT here)."""
    from retrysafe.integrations.django import get_wsgi_application
    from tests.integrations import django_project

    django_project.RECORDER = recorder = Recorder()
    application = get_wsgi_application()
    assert application.settings.wait == 0
    server = WsgiServer(application)
    try:
        with httpx.Client(base_url=server.url, headers=CALLER) as client:
            # RETRYSAFE["ROUTES"] makes the unmarked /plain require a key.
            assert client.post("/plain").status_code == 400
            key = {"Idempotency-Key": new_key()}
            assert client.post("/plain", headers=key).status_code == 201
            assert client.post("/plain", headers=key).headers["idempotent-replayed"] == "true"
        assert recorder.calls["/plain"] == 1
    finally:
        server.stop()


def test_django_asgi_application_reads_view_marks() -> None:
    """The ASGI form resolves the view the same way and reads its mark."""
    from retrysafe.integrations.django import get_asgi_application
    from tests.integrations import django_project

    django_project.RECORDER = recorder = Recorder()
    server = AsgiServer(get_asgi_application(store=AsyncMemoryStore(), routes={}))
    try:
        with httpx.Client(base_url=server.url, headers=CALLER) as client:
            assert client.post("/required").status_code == 400
            key = {"Idempotency-Key": new_key()}
            assert client.post("/v1/required", headers=key).status_code == 201
            assert client.post("/v1/required", headers=key).headers["idempotent-replayed"] == "true"
        assert recorder.calls == {"/v1/required": 1}
    finally:
        server.stop()


def test_django_settings_refuse_an_unknown_key() -> None:
    """A misspelt RETRYSAFE key is an ImproperlyConfigured error naming the known ones."""
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from retrysafe.integrations.django import get_wsgi_application
    from tests.integrations import django_project  # noqa: F401 - configures Django

    with (
        override_settings(RETRYSAFE={"STORE": "memory://", "WIAT": 0}),
        pytest.raises(ImproperlyConfigured, match="WIAT"),
    ):
        get_wsgi_application(store=MemoryStore())


def test_importing_retrysafe_imports_no_framework() -> None:
    """Importing retrysafe, its ASGI and WSGI faces or the integrations loads no framework."""
    code = (
        "import sys, retrysafe, retrysafe.asgi, retrysafe.wsgi, retrysafe.integrations\n"
        "bad = [m for m in ('fastapi', 'litestar', 'flask', 'django', 'starlette') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
