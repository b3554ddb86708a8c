"""Who the caller is, in Litestar (B8): the middleware runs after Litestar's authentication and
scopes keys to `scope["user"]`.

Each app is served by uvicorn on loopback; each `httpx.Client` is one browser (its own cookies).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from litestar import Litestar, Request, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.security.session_auth import SessionAuth

from retrysafe._errors import ConfigurationError
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._http import SECRET_ENV
from retrysafe.integrations.litestar import (
    IdempotencyPlugin,
    idempotency,
    idempotency_middleware,
    install,
)
from retrysafe.stores.memory import AsyncMemoryStore
from tests.integrations.apps import Recorder
from tests.integrations.conftest import new_key
from tests.integrations.servers import AsgiServer

SECRET = "litestar-tests-scope-secret-012345"


@dataclass(frozen=True)
class User:
    """An authenticated user."""

    id: int
    name: str


USERS = {"alice": User(1, "alice"), "bob": User(2, "bob")}
TOKENS = {"t1": USERS["alice"], "t2": USERS["alice"], "t3": USERS["bob"]}
"""Bearer tokens: t2 is alice's refreshed token."""


class TokenAuthentication(AbstractAuthenticationMiddleware):
    """Litestar authentication by bearer token: 401 without a known one."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        """Return the token's user, or refuse the request."""
        token = connection.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in TOKENS:
            raise NotAuthorizedException
        return AuthenticationResult(user=TOKENS[token], auth=token)


def handlers(recorder: Recorder) -> list[Any]:
    """`/payments` (marked), `/signup` (marked, anonymous), and `/login` for sessions."""

    def created(path: str, request: Request[Any, Any, Any]) -> dict[str, Any]:
        user = request.scope.get("user")
        return {"user": user.name if user else None, "n": recorder.count(path)}

    @post("/payments", opt=idempotency())
    async def payments(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return created("/payments", request)

    @post("/signup", opt=idempotency())
    async def signup(request: Request[Any, Any, Any]) -> dict[str, Any]:
        return created("/signup", request)

    @post("/login")
    async def login(request: Request[Any, Any, Any]) -> dict[str, str]:
        data = await request.json()
        request.set_session({"user": data["user"]})
        return {"user": data["user"]}

    return [payments, signup, login]


def session_app(
    recorder: Recorder, store: AsyncMemoryStore, **options: Any
) -> tuple[Litestar, IdempotencyPlugin]:
    """Users log in with a server-side session (a cookie); `/login` and `/signup` are open."""

    def user_of(session: dict[str, Any], connection: ASGIConnection[Any, Any, Any, Any]) -> Any:
        return USERS.get(session.get("user", ""))

    auth = SessionAuth[User, Any](
        retrieve_user_handler=user_of,
        session_backend_config=ServerSideSessionConfig(),
        exclude=["/login", "/signup"],
    )
    plugin = IdempotencyPlugin(store=store, **options)
    app = Litestar(handlers(recorder), on_app_init=[auth.on_app_init], plugins=[plugin])
    return app, plugin


def token_app(
    recorder: Recorder, store: AsyncMemoryStore, **options: Any
) -> tuple[Litestar, IdempotencyPlugin]:
    """Users send a bearer token, checked by the app's own authentication middleware."""
    plugin = IdempotencyPlugin(store=store, **options)
    app = Litestar(
        handlers(recorder),
        middleware=[DefineMiddleware(TokenAuthentication, exclude=["/signup"])],
        plugins=[plugin],
    )
    return app, plugin


@dataclass
class Served:
    """An app on uvicorn, its handler calls and its plugin."""

    server: AsgiServer
    recorder: Recorder
    store: AsyncMemoryStore
    plugin: IdempotencyPlugin
    clients: list[httpx.Client] = field(default_factory=list)

    def browser(self, user: str | None = None) -> httpx.Client:
        """Return a new client (a cookie jar), logged in as `user` if given."""
        client = httpx.Client(base_url=self.server.url, timeout=15)
        self.clients.append(client)
        if user is not None:
            assert client.post("/login", json={"user": user}).status_code == 201
        return client


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Served]]:
    """A factory: serve an app built by `build` (the scope secret in the environment unless
    `kept_secret`); stop every server afterwards."""
    servers: list[tuple[AsgiServer, Served]] = []

    def run(build: Callable[..., Any], *, kept_secret: bool = False, **options: Any) -> Served:
        if kept_secret:
            monkeypatch.delenv(SECRET_ENV, raising=False)
        else:
            monkeypatch.setenv(SECRET_ENV, SECRET)
        recorder, store = Recorder(), AsyncMemoryStore()
        app, plugin = build(recorder, store, **options)
        server = AsgiServer(app, lifespan="on")
        served = Served(server, recorder, store, plugin)
        servers.append((server, served))
        return served

    yield run
    for server, served in servers:
        for client in served.clients:
            client.close()
        server.stop()


def test_b8_token_refresh_keeps_the_scope(serve: Callable[..., Served]) -> None:
    """A refreshed token of the same user replays; another user's token with the same key runs
    on its own: the scope is `scope["user"]`, set by the app's authentication middleware."""
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
    assert served.recorder.calls["/payments"] == 2
    assert client.post("/payments", headers=key, json={}).status_code == 401  # B9: before us


def test_b8_login_again_keeps_the_scope(serve: Callable[..., Served]) -> None:
    """A user who logs in again (a new session cookie) and retries the key gets the replay; the
    handler ran once. The scope secret is the one kept in the store (none configured)."""
    served = serve(session_app, kept_secret=True)
    key = {"Idempotency-Key": new_key()}
    first, second = served.browser("alice"), served.browser("alice")
    original = first.post("/payments", headers=key, json={})
    retried = second.post("/payments", headers=key, json={})
    assert first.cookies["session"] != second.cookies["session"]
    assert original.json() == {"user": "alice", "n": 1}
    assert retried.headers["idempotent-replayed"] == "true"
    assert retried.content == original.content
    assert served.recorder.calls["/payments"] == 1
    assert served.server.call(served.store.get(SECRET_IDENTITY)) is not None


def test_b8_two_cookie_users_with_one_key_run_apart(serve: Callable[..., Served]) -> None:
    """Two users logged in by session cookie, no Authorization header, the same key and body:
    two executions, each user gets (and then replays) their own response."""
    served = serve(session_app)
    key = {"Idempotency-Key": new_key()}
    alice, bob = served.browser("alice"), served.browser("bob")
    first = [alice.post("/payments", headers=key, json={}) for _ in range(2)]
    second = [bob.post("/payments", headers=key, json={}) for _ in range(2)]
    assert [r.json() for r in first] == [{"user": "alice", "n": 1}] * 2
    assert [r.json() for r in second] == [{"user": "bob", "n": 2}] * 2
    replayed = [r.headers.get("idempotent-replayed") for r in first + second]
    assert replayed == [None, "true", None, "true"]
    assert served.recorder.calls["/payments"] == 2


@pytest.mark.parametrize("build", [session_app, token_app])
def test_b8_anonymous_keyed_request_is_refused(
    serve: Callable[..., Served], build: Callable[..., Any]
) -> None:
    """A keyed request to a route open to anonymous callers, with no user and no credential,
    gets the 400 scope-missing problem; the handler does not run."""
    served = serve(build)
    refused = served.browser().post("/signup", headers={"Idempotency-Key": new_key()}, json={})
    assert refused.status_code == 400
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("#scope-missing")
    assert served.recorder.calls["/signup"] == 0


def test_b8_anonymous_shared_scope(serve: Callable[..., Served]) -> None:
    """With `anonymous="shared"`, two anonymous callers with one key share a scope: the second
    gets the replay."""
    served = serve(session_app, anonymous="shared")
    key = {"Idempotency-Key": new_key()}
    first = served.browser().post("/signup", headers=key, json={})
    second = served.browser().post("/signup", headers=key, json={})
    assert first.json() == {"user": None, "n": 1}
    assert second.headers["idempotent-replayed"] == "true"
    assert served.recorder.calls["/signup"] == 1


def test_b8_plugin_shares_one_middleware_across_routes(serve: Callable[..., Served]) -> None:
    """Every route's stack shares the plugin's middleware: one set of counters."""
    served = serve(token_app)
    client = served.browser()
    auth = {"Authorization": "Bearer t1"}
    client.post("/payments", headers={**auth, "Idempotency-Key": new_key()}, json={})
    client.post("/signup", headers={**auth, "Idempotency-Key": new_key()}, json={})
    assert served.plugin.counters.snapshot()["executions"] == 2


def test_b8_middleware_listed_after_authentication_sees_the_user() -> None:
    """`idempotency_middleware` placed after the authentication middleware scopes by user."""
    recorder = Recorder()
    middleware = [
        DefineMiddleware(TokenAuthentication),
        idempotency_middleware(store=AsyncMemoryStore(), scope_secret=SECRET),
    ]
    server = AsgiServer(Litestar(handlers(recorder), middleware=middleware))
    try:
        with httpx.Client(base_url=server.url, timeout=15) as client:
            key = {"Idempotency-Key": new_key()}
            client.post("/payments", headers={**key, "Authorization": "Bearer t1"}, json={})
            again = client.post("/payments", headers={**key, "Authorization": "Bearer t2"}, json={})
        assert again.headers["idempotent-replayed"] == "true"
        assert recorder.calls["/payments"] == 1
    finally:
        server.stop()


def test_b8_install_refuses_an_app_with_authentication() -> None:
    """`install` wraps the app before Litestar's authentication runs, so it refuses such an
    app and names the plugin; with a scope function it is allowed."""
    app = Litestar(handlers(Recorder()), middleware=[DefineMiddleware(TokenAuthentication)])
    with pytest.raises(ConfigurationError, match="IdempotencyPlugin"):
        install(app, store=AsyncMemoryStore())
    install(app, store=AsyncMemoryStore(), scope_function=lambda request: "tenant")
