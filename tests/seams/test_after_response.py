"""Work an app does after its response (background tasks, close()) neither delays the answer
nor changes the stored outcome (B18)."""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from fastapi import BackgroundTasks, FastAPI
from flask import Flask
from litestar import Litestar, post
from litestar.background_tasks import BackgroundTask as LitestarTask
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import retrysafe
from retrysafe import asgi, wsgi
from tests.http.conftest import WsgiServer, make_client
from tests.servers import AsgiServer

AUTH = {"Authorization": "Bearer ada"}
BOUND = 10.0


class After:
    """What the work after the response saw: it waits for `release`, then fails or ends."""

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.release = threading.Event()
        self.started = threading.Event()
        self.done = threading.Event()
        self.runs = 0

    def work(self) -> None:
        """The work after the response: blocks until released, then raises or returns."""
        self.started.set()
        self.release.wait(BOUND)
        self.done.set()
        if self.fail:
            raise RuntimeError("the background task failed")

    async def awork(self) -> None:
        """`work`, from async code."""
        await anyio.to_thread.run_sync(self.work)


def starlette_app(after: After) -> Any:
    async def pay(request: Request) -> Response:
        after.runs += 1
        return JSONResponse({"id": after.runs}, 201, background=BackgroundTask(after.awork))

    return Starlette(routes=[Route("/pay", pay, methods=["POST"])])


def fastapi_app(after: After) -> Any:
    app = FastAPI()

    @app.post("/pay", status_code=201)
    async def pay(tasks: BackgroundTasks) -> dict[str, int]:
        after.runs += 1
        tasks.add_task(after.awork)
        return {"id": after.runs}

    return app


def litestar_app(after: After) -> Any:
    @post("/pay", status_code=201, background=LitestarTask(after.awork))
    async def pay() -> dict[str, int]:
        after.runs += 1
        return {"id": after.runs}

    return Litestar(route_handlers=[pay])


def flask_app(after: After) -> Any:
    app = Flask(__name__)

    @app.post("/pay")
    def pay() -> Any:
        after.runs += 1
        response = app.make_response(({"id": after.runs}, 201))
        response.call_on_close(after.work)  # runs in the WSGI iterable's close()
        return response

    return app.wsgi_app


ASGI_APPS: dict[str, Callable[[After], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
}


@pytest.fixture(params=[*ASGI_APPS, "flask"])
def framework(request: pytest.FixtureRequest) -> str:
    """Each framework's way of working after the response."""
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["failing", "slow"])
def after(request: pytest.FixtureRequest) -> Iterator[After]:
    """A failing or a slow piece of work after the response; always released at the end."""
    work = After(fail=request.param)
    yield work
    work.release.set()


def serve(framework: str, after: After) -> AsgiServer | WsgiServer:
    """The framework's app inside the idempotency middleware, on a real server."""
    if framework == "flask":
        return WsgiServer(
            wsgi.IdempotencyMiddleware(flask_app(after), store=retrysafe.open_store("memory://"))
        )
    app = asgi.IdempotencyMiddleware(
        ASGI_APPS[framework](after), store=retrysafe.open_async_store("memory://")
    )
    return AsgiServer(app)


def test_b18_work_after_the_response_neither_delays_nor_changes_it(
    framework: str, after: After, caplog: pytest.LogCaptureFixture
) -> None:
    """The client gets its 201 while the work after the response is still blocked (so nothing
    waited for it); when that work then fails or ends, a retry replays the 201 and the handler
    ran once."""
    caplog.set_level(logging.ERROR)
    server = serve(framework, after)
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"', **AUTH}
    try:
        with make_client(server.url) as client:
            first = client.post("/pay", json={"amount": 1}, headers=key, timeout=BOUND / 2)
            assert after.started.wait(BOUND)
            assert not after.done.is_set()  # the answer came while the work was blocked
            after.release.set()
            assert after.done.wait(BOUND)
            again = client.post("/pay", json={"amount": 1}, headers=key, timeout=BOUND)
    finally:
        server.stop()
    assert first.status_code == 201
    assert first.json() == {"id": 1}
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == {"id": 1}
    assert after.runs == 1


def test_b18_transactional_mode_commits_and_answers_before_work_after_the_response(
    tmp_path: Any, after: After
) -> None:
    """Transactional mode: the response commits with its write and reaches the client while
    the background task is still blocked; the task's failure changes nothing; a retry replays."""
    import sqlite3

    from retrysafe.transactions.asgi import TRANSACTION_KEY, TransactionalMiddleware

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE payments (id INTEGER PRIMARY KEY)")
    setup.close()

    async def pay(request: Request) -> Response:
        tx = request.scope[TRANSACTION_KEY]
        await anyio.to_thread.run_sync(tx.connection.execute, "INSERT INTO payments DEFAULT VALUES")
        after.runs += 1
        return JSONResponse({"id": after.runs}, 201, background=BackgroundTask(after.awork))

    app = TransactionalMiddleware(
        Starlette(routes=[Route("/pay", pay, methods=["POST"])]),
        connect=lambda: sqlite3.connect(path, check_same_thread=False),
        scope_secret="a-test-secret-of-16+",
    )
    server = AsgiServer(app)
    key = {"Idempotency-Key": f'"{uuid.uuid4()}"', **AUTH}
    try:
        with make_client(server.url) as client:
            first = client.post("/pay", json={}, headers=key, timeout=BOUND / 2)
            assert after.started.wait(BOUND)
            assert not after.done.is_set()
            after.release.set()
            assert after.done.wait(BOUND)
            again = client.post("/pay", json={}, headers=key, timeout=BOUND)
    finally:
        server.stop()
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true"
    assert after.runs == 1
    with contextlib.closing(sqlite3.connect(path)) as check:
        assert check.execute("SELECT count(*) FROM payments").fetchone() == (1,)
