"""Who the caller is, inside Flask (B8): the extension scopes keys to the logged-in user.

Each app is served by wsgiref on loopback; each `httpx.Client` is one browser (its own cookies).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from flask import Flask, Response, g, request, session

from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._http import SECRET_ENV
from retrysafe.integrations.flask import Idempotency, idempotency
from retrysafe.stores.memory import MemoryStore
from tests.integrations.apps import Recorder
from tests.integrations.conftest import new_key
from tests.integrations.servers import WsgiServer

flask_login = pytest.importorskip("flask_login")

SECRET = "flask-tests-scope-secret-0123456789"
TOKENS = {"t1": "alice", "t2": "alice", "t3": "bob"}
"""Bearer tokens: t2 is alice's refreshed token."""


class LoginUser(flask_login.UserMixin):  # type: ignore[misc]
    """A Flask-Login user named by its id."""

    def __init__(self, name: str) -> None:
        self.id = name


@dataclass(frozen=True)
class TokenUser:
    """The user a bearer token names, as an app's own authentication hook sets it."""

    id: str


@dataclass
class Served:
    """An app on wsgiref, its handler calls and its store."""

    url: str
    recorder: Recorder
    store: MemoryStore
    clients: list[httpx.Client] = field(default_factory=list)

    def browser(self, user: str | None = None) -> httpx.Client:
        """Return a new client (a cookie jar), logged in as `user` if given."""
        client = httpx.Client(base_url=self.url, timeout=15)
        self.clients.append(client)
        if user is not None:
            assert client.post("/login", json={"user": user}).status_code == 200
        return client


def _views(app: Flask, recorder: Recorder, user: Callable[[], str | None]) -> None:
    def created(path: str) -> Response:
        body = json.dumps({"user": user(), "n": recorder.count(path)})
        return Response(body, status=201, content_type="application/json")

    @app.post("/payments")
    @idempotency()
    def payments() -> Response:
        return created("/payments")

    @app.post("/export")
    @idempotency(max_response_size=16)
    def export() -> Response:
        recorder.count("/export")
        chunks = [b"0123456789"] * (3 if request.args.get("big") else 1)
        return Response(iter(chunks), status=201, content_type="text/plain")

    @app.post("/fail")
    @idempotency()
    def fail() -> Response:
        recorder.count("/fail")
        raise RuntimeError("the view failed")


def login_app(recorder: Recorder, store: MemoryStore, **options: Any) -> Flask:
    """An app whose users log in with Flask-Login (a session cookie)."""
    app = Flask(__name__)
    app.secret_key = "flask-tests"
    manager = flask_login.LoginManager(app)
    manager.user_loader(LoginUser)

    @app.post("/login")
    def login() -> dict[str, str]:
        flask_login.login_user(LoginUser(request.get_json()["user"]))
        session["login"] = uuid.uuid4().hex  # each login is a session of its own
        return {"user": flask_login.current_user.get_id()}

    def current() -> str | None:
        user = flask_login.current_user
        return str(user.get_id()) if user.is_authenticated else None

    _views(app, recorder, current)
    Idempotency(app, store=store, **options)
    return app


def token_app(recorder: Recorder, store: MemoryStore, **options: Any) -> Flask:
    """An app with its own bearer-token hook, which names the user to the extension."""
    app = Flask(__name__)

    @app.before_request
    def authenticate() -> None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        g.user = TokenUser(TOKENS[token]) if token in TOKENS else None

    _views(app, recorder, lambda: g.user.id if g.user else None)
    extension = Idempotency(store=store, principal=lambda: g.user, **options)
    extension.init_app(app)
    return app


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Served]]:
    """A factory: serve an app built by `build` (the scope secret in the environment unless
    `kept_secret`); stop every server afterwards."""
    servers: list[tuple[WsgiServer, Served]] = []

    def run(build: Callable[..., Flask], *, kept_secret: bool = False, **options: Any) -> Served:
        if kept_secret:
            monkeypatch.delenv(SECRET_ENV, raising=False)
        else:
            monkeypatch.setenv(SECRET_ENV, SECRET)
        recorder, store = Recorder(), MemoryStore()
        server = WsgiServer(build(recorder, store, **options))
        served = Served(server.url, recorder, store)
        servers.append((server, served))
        return served

    yield run
    for server, served in servers:
        for client in served.clients:
            client.close()
        server.stop()


def test_b8_login_again_keeps_the_scope(serve: Callable[..., Served]) -> None:
    """A user who logs in again (a new session) and retries the key gets the replay; the view
    ran once. The scope secret is the one kept in the store (none configured)."""
    served = serve(login_app, kept_secret=True)
    key = new_key()
    first = served.browser("alice")
    second = served.browser("alice")
    original = first.post("/payments", headers={"Idempotency-Key": key}, json={})
    assert first.cookies["session"] != second.cookies["session"]
    retried = second.post("/payments", headers={"Idempotency-Key": key}, json={})
    assert original.status_code == 201
    assert original.json() == {"user": "alice", "n": 1}
    assert retried.status_code == 201
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == original.content
    assert served.recorder.calls["/payments"] == 1
    assert served.store.get(SECRET_IDENTITY) is not None
    (record,) = [r for r in served.store.list_records() if r.identity.key == key]
    assert record.identity.scope.startswith("p:")
    assert "alice" not in record.identity.scope


def test_b8_token_refresh_keeps_the_scope_with_a_principal_function(
    serve: Callable[..., Served],
) -> None:
    """With `principal=`, a refreshed bearer token (same user) replays; another user's token
    with the same key runs on its own."""
    served = serve(token_app)
    key = {"Idempotency-Key": new_key()}
    client = served.browser()
    original = client.post("/payments", headers={**key, "Authorization": "Bearer t1"}, json={})
    refreshed = client.post("/payments", headers={**key, "Authorization": "Bearer t2"}, json={})
    other = client.post("/payments", headers={**key, "Authorization": "Bearer t3"}, json={})
    assert original.json() == {"user": "alice", "n": 1}
    assert refreshed.headers["idempotent-replayed"] == "true"
    assert refreshed.content == original.content
    assert other.json() == {"user": "bob", "n": 2}
    assert "idempotent-replayed" not in other.headers
    assert served.recorder.calls["/payments"] == 2


def test_b8_two_cookie_users_with_one_key_run_apart(serve: Callable[..., Served]) -> None:
    """Two users logged in by session cookie, no Authorization header, the same key and body:
    two executions, each user gets (and then replays) their own response."""
    served = serve(login_app)
    key = {"Idempotency-Key": new_key()}
    alice = served.browser("alice")
    bob = served.browser("bob")
    first = [alice.post("/payments", headers=key, json={}) for _ in range(2)]
    second = [bob.post("/payments", headers=key, json={}) for _ in range(2)]
    assert [r.json() for r in first] == [{"user": "alice", "n": 1}] * 2
    assert [r.json() for r in second] == [{"user": "bob", "n": 2}] * 2
    assert [r.headers.get("idempotent-replayed") for r in first + second] == [
        None,
        "true",
        None,
        "true",
    ]
    assert served.recorder.calls["/payments"] == 2


@pytest.mark.parametrize("build", [login_app, token_app])
def test_b8_anonymous_keyed_request_is_refused(
    serve: Callable[..., Served], build: Callable[..., Flask]
) -> None:
    """A keyed request with no user and no credential gets the 400 scope-missing problem; the
    view does not run. Without a key it runs, untracked (B6)."""
    served = serve(build)
    client = served.browser()
    refused = client.post("/payments", headers={"Idempotency-Key": new_key()}, json={})
    assert client.post("/payments", json={}).status_code == 201
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("#scope-missing")
    assert served.recorder.calls["/payments"] == 1


def test_b8_anonymous_shared_scope(serve: Callable[..., Served]) -> None:
    """With `anonymous="shared"`, two anonymous callers with one key share a scope: the second
    gets the replay."""
    served = serve(login_app, anonymous="shared")
    key = {"Idempotency-Key": new_key()}
    one = served.browser()
    two = served.browser()
    first = one.post("/payments", headers=key, json={})
    second = two.post("/payments", headers=key, json={})
    assert first.json() == {"user": None, "n": 1}
    assert second.headers["idempotent-replayed"] == "true"
    assert served.recorder.calls["/payments"] == 1


def test_b23_streamed_response_is_stored_or_marked_not_stored(
    serve: Callable[..., Served],
) -> None:
    """A streamed body within `max_response_size` is stored and replayed byte for byte; a
    longer one reaches the client whole, and a retry gets 410 response-not-stored (B22)."""
    served = serve(login_app)
    client = served.browser("alice")
    for path, body in [("/export", b"0123456789"), ("/export?big=1", b"0123456789" * 3)]:
        key = {"Idempotency-Key": new_key()}
        first = client.post(path, headers=key, json={})
        again = client.post(path, headers=key, json={})
        assert (first.status_code, first.content) == (201, body)
        if len(body) <= 16:
            assert (again.status_code, again.content) == (201, body)
            assert again.headers["content-type"] == first.headers["content-type"]
        else:
            assert again.status_code == 410
            assert again.json()["type"].endswith("#response-not-stored")
    assert served.recorder.calls["/export"] == 2


def test_b18_view_error_releases_the_claim(serve: Callable[..., Served]) -> None:
    """A view that raises answers 500 and releases the claim: the retry runs the view again."""
    served = serve(login_app)
    key = {"Idempotency-Key": new_key()}
    client = served.browser("alice")
    statuses = [client.post("/fail", headers=key, json={}).status_code for _ in range(2)]
    assert statuses == [500, 500]
    assert served.recorder.calls["/fail"] == 2
