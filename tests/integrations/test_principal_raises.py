"""A principal hook that raises (B8, B24): Flask's `principal()` and Flask-Login's loader,
Django's lazy `request.user`, a Litestar user whose identifier cannot be read.

As FastAPI's `principal=` dependency that fails: the keyed request is refused with the 500
`scope-unresolved` problem+json (not the framework's HTML 500), logged once, nothing runs and
nothing is stored, and the observers see the operation start and end. A refusal of the app's
own (werkzeug's `abort(401)`, Django's `PermissionDenied`) is the framework's answer, as it
would be from the view; the operation still ends. Each app on a real server (wsgiref, uvicorn).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.utils.functional import SimpleLazyObject
from flask import Flask, abort

from retrysafe.integrations.flask import Idempotency, idempotency
from retrysafe.observe import Observer, Operation
from retrysafe.stores.memory import AsyncMemoryStore, MemoryStore
from tests.http.conftest import is_problem
from tests.integrations import django_project  # configures Django: its `/marked` view
from tests.integrations.apps import Recorder
from tests.integrations.conftest import new_key
from tests.integrations.servers import AsgiServer, WsgiServer

flask_login = pytest.importorskip("flask_login")

SECRET = "principal-raises-secret-0123456789"
FAILURE = "the user service timed out"


class Seen(Observer):
    """Which operations started, and the decision of each that ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_count = 0
        self.decisions: list[str | None] = []
        self.one_ended = threading.Event()

    def reset(self) -> None:
        """Forget every operation."""
        with self._lock:
            self.started_count = 0
            self.decisions = []
            self.one_ended.clear()

    def started(self, operation: Operation) -> None:
        """Count it."""
        with self._lock:
            self.started_count += 1

    def ended(self, operation: Operation) -> None:
        """Keep its decision."""
        with self._lock:
            self.decisions.append(operation.decision)
        self.one_ended.set()


@dataclass
class Served:
    """An app on a real server: its client, the views' calls, its observer."""

    client: httpx.Client
    recorder: Recorder
    seen: Seen

    def keyed(self, path: str) -> httpx.Response:
        """POST `path` with a new key and a credential."""
        headers = {"Idempotency-Key": f'"{new_key()}"', "Authorization": "Bearer t1"}
        return self.client.post(path, headers=headers, json={})


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """A factory: serve a WSGI or ASGI app; stop every server afterwards."""
    stops: list[Callable[[], None]] = []

    def run(app: Any, recorder: Recorder, seen: Seen, *, asgi: bool = False) -> Served:
        server = AsgiServer(app) if asgi else WsgiServer(app)
        client = httpx.Client(base_url=server.url, timeout=15)
        stops.extend((server.stop, client.close))
        return Served(client, recorder, seen)

    yield run
    for stop in reversed(stops):
        stop()


def _unresolved_once(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "retrysafe_event", None) == "scope_unresolved"]


def _assert_refused(
    served: Served, caplog: pytest.LogCaptureFixture, path: str, name: str
) -> logging.LogRecord:
    """POST `path` keyed: the 500 `scope-unresolved` problem naming `name` and the error's type
    (not its message); the view did not run, the operation ended rejected, and it was logged
    once. Return that log record."""
    with caplog.at_level(logging.ERROR, logger="retrysafe"):
        answer = served.keyed(path)
    assert is_problem(answer, 500, "scope-unresolved"), answer.text
    detail = answer.json()["detail"]
    assert name in detail
    assert "RuntimeError" in detail
    assert FAILURE not in detail  # the exception's message may hold what the client sent
    assert served.recorder.calls[path] == 0
    assert served.seen.started_count == 1
    # An ASGI server may answer before the operation's end is reported: wait for it.
    assert served.seen.one_ended.wait(10)
    assert served.seen.decisions == ["rejected"]
    logged = _unresolved_once(caplog)
    assert len(logged) == 1
    return logged[0]


# Flask


def _flask_app(recorder: Recorder, seen: Seen, **options: Any) -> tuple[Flask, MemoryStore]:
    app = Flask(__name__)
    app.secret_key = "principal-raises"

    @app.post("/payments")
    @idempotency()
    def payments() -> tuple[dict[str, int], int]:
        return {"n": recorder.count("/payments")}, 201

    store = MemoryStore()
    Idempotency(app, store=store, observers=[seen], scope_secret=SECRET, **options)
    return app, store


def user_service() -> object:
    """An app's principal function whose user service fails."""
    raise RuntimeError(FAILURE)


def test_b8_b24_flask_principal_that_raises_is_scope_unresolved(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """`principal()` raises: the 500 `scope-unresolved` problem naming the function and the
    error's type, logged once with the error; nothing ran or was stored; the operation
    ended. The retry gets the same answer (nothing was claimed)."""
    recorder, seen = Recorder(), Seen()
    app, store = _flask_app(recorder, seen, principal=user_service)
    logged = _assert_refused(serve(app, recorder, seen), caplog, "/payments", "user_service")
    assert logged.exc_info is not None
    assert isinstance(logged.exc_info[1], Exception)
    assert isinstance(logged.exc_info[1].__cause__, RuntimeError)
    assert store.list_records() == []


def test_b8_b24_flask_login_loader_that_raises_is_scope_unresolved(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """Flask-Login's loader raises when `current_user` is read: the same 500 problem, naming
    Flask-Login's `current_user`; the view does not run."""
    recorder, seen = Recorder(), Seen()
    app, _ = _flask_app(recorder, seen)
    manager = flask_login.LoginManager(app)

    @manager.request_loader
    def load(request: Any) -> object:
        raise RuntimeError(FAILURE)

    _assert_refused(serve(app, recorder, seen), caplog, "/payments", "current_user")


def test_b8_b9_flask_principal_that_aborts_is_the_apps_answer(
    serve: Callable[..., Served],
) -> None:
    """`principal()` refuses with werkzeug's `abort(401)`: Flask answers 401, as from the view;
    the view does not run, and the operation ends."""

    def refuse() -> object:
        abort(401)

    recorder, seen = Recorder(), Seen()
    app, _ = _flask_app(recorder, seen, principal=refuse)
    served = serve(app, recorder, seen)
    answer = served.keyed("/payments")
    assert answer.status_code == 401
    assert recorder.calls["/payments"] == 0
    assert (seen.started_count, len(seen.decisions)) == (1, 1)


# Django


SEEN = Seen()
"""The observer `RETRYSAFE["OBSERVERS"]` names (reset by each Django test)."""


class FailingAuthentication:
    """Sets a lazy `request.user` whose loading fails, as `AuthenticationMiddleware` does with
    a session backend that cannot be reached; `X-Refuse` makes it refuse instead."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        """Set the lazy user, then run the rest."""

        def load() -> object:
            if "X-Refuse" in request.headers:
                raise PermissionDenied
            raise RuntimeError(FAILURE)

        request.user = SimpleLazyObject(load)  # type: ignore[assignment]
        return self.get_response(request)


def _django(serve: Callable[..., Served]) -> Served:
    from django.core.handlers.wsgi import WSGIHandler

    recorder = Recorder()
    django_project.RECORDER = recorder
    SEEN.reset()
    config = {"STORE": "memory://", "OBSERVERS": [SEEN], "SCOPE_SECRET": SECRET}
    middleware = [
        f"{__name__}.FailingAuthentication",
        "retrysafe.integrations.django.IdempotencyMiddleware",
    ]
    with override_settings(RETRYSAFE=config, MIDDLEWARE=middleware):
        handler = WSGIHandler()
    return serve(handler, recorder, SEEN)


def test_b8_b24_django_user_that_fails_to_load_is_scope_unresolved(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """Loading `request.user` raises: the 500 `scope-unresolved` problem naming
    `request.user`, logged once; the view does not run and the operation ended."""
    _assert_refused(_django(serve), caplog, "/marked", "request.user")


def test_b8_b9_django_user_that_refuses_is_djangos_answer(
    serve: Callable[..., Served],
) -> None:
    """Loading `request.user` raises `PermissionDenied`: Django answers 403, as from the view;
    the view does not run, and the operation ends."""
    served = _django(serve)
    headers = {"Idempotency-Key": f'"{new_key()}"', "X-Refuse": "1"}
    answer = served.client.post("/marked", headers=headers, json={})
    assert answer.status_code == 403
    assert served.recorder.calls["/marked"] == 0
    assert (SEEN.started_count, len(SEEN.decisions)) == (1, 1)


# Litestar


def test_b8_b24_litestar_user_whose_identifier_fails_is_scope_unresolved(
    serve: Callable[..., Served], caplog: pytest.LogCaptureFixture
) -> None:
    """The user Litestar's authentication set fails when its `id` is read (a lazy ORM
    attribute whose session is gone): the 500 `scope-unresolved` problem naming its class,
    logged once, not Litestar's own 500; the handler does not run."""
    from litestar import Litestar, post
    from litestar.connection import ASGIConnection
    from litestar.middleware import (
        AbstractAuthenticationMiddleware,
        AuthenticationResult,
        DefineMiddleware,
    )

    from retrysafe.integrations.litestar import IdempotencyPlugin
    from retrysafe.integrations.litestar import idempotency as litestar_idempotency

    class DetachedUser:
        @property
        def id(self) -> int:
            raise RuntimeError(FAILURE)

    class Authentication(AbstractAuthenticationMiddleware):
        async def authenticate_request(
            self, connection: ASGIConnection[Any, Any, Any, Any]
        ) -> AuthenticationResult:
            return AuthenticationResult(user=DetachedUser(), auth="t1")

    recorder, seen = Recorder(), Seen()

    @post("/payments", opt=litestar_idempotency())
    async def payments() -> dict[str, int]:
        return {"n": recorder.count("/payments")}

    plugin = IdempotencyPlugin(store=AsyncMemoryStore(), observers=[seen], scope_secret=SECRET)
    app = Litestar(  # Litestar's own logging setup would take the root logger from caplog
        [payments],
        middleware=[DefineMiddleware(Authentication)],
        plugins=[plugin],
        logging_config=None,
    )
    _assert_refused(serve(app, recorder, seen, asgi=True), caplog, "/payments", "DetachedUser")
