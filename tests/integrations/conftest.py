"""Start a framework's app, marked through its integration, on a real server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.integrations.apps import ASGI_FRAMEWORKS, BUILDERS, FRAMEWORKS, Recorder
from tests.integrations.servers import AsgiServer, WsgiServer

CALLER = {"Authorization": "Bearer integration-test"}
"""The credential test clients send: the middleware scopes keys by caller (B8)."""


@dataclass
class Running:
    """A framework app behind the middleware, served on loopback."""

    framework: str
    url: str
    recorder: Recorder
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=15, headers=CALLER)

    def post(self, path: str, key: str | None = None, **kwargs: Any) -> httpx.Response:
        """POST an empty JSON object to `path`, with `Idempotency-Key: key` if given."""
        headers = {} if key is None else {"Idempotency-Key": key}
        return self.client.post(path, headers=headers, json={}, **kwargs)


def new_key() -> str:
    """Return a fresh Idempotency-Key."""
    return str(uuid.uuid4())


@contextlib.contextmanager
def serving() -> Iterator[Callable[[str, Recorder, Any], Running]]:
    """Yield `serve(framework, recorder, app)`, which serves `app` on loopback (uvicorn for an
    ASGI framework's, wsgiref otherwise); on exit, close each client and stop each server."""
    servers: list[tuple[AsgiServer | WsgiServer, httpx.Client]] = []

    def serve(framework: str, recorder: Recorder, app: Any) -> Running:
        server = AsgiServer(app) if framework in ASGI_FRAMEWORKS else WsgiServer(app)
        running = Running(framework, server.url, recorder)
        servers.append((server, running.client))
        return running

    yield serve
    for server, client in servers:
        client.close()
        server.stop()


@pytest.fixture
def start() -> Iterator[Callable[..., Running]]:
    """A factory: serve `framework`'s app installed with `options`; stop it afterwards."""
    with serving() as serve:

        def run(framework: str, **options: Any) -> Running:
            recorder = Recorder()
            if framework == "django":
                options.setdefault("routes", {})  # not the RETRYSAFE["ROUTES"] of the settings
            return serve(framework, recorder, BUILDERS[framework](recorder, **options))

        yield run


@pytest.fixture(params=FRAMEWORKS)
def framework(request: pytest.FixtureRequest) -> str:
    """Each framework: Starlette, FastAPI, Litestar on uvicorn; Flask, Django on wsgiref."""
    return str(request.param)
