"""Who a key belongs to, on real servers (B8, B9, B35): uvicorn for ASGI, waitress for WSGI.

The scope is the caller: the principal an outer authentication layer set, else the normalised
credential header, stored as an HMAC with a per-deployment secret; a keyed request with
neither is refused with `scope-missing` unless the route says `anonymous="shared"`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retrysafe import open_async_store, open_store
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._http import RequestView, RouteSettings
from retrysafe.asgi import IdempotencyMiddleware
from tests.http.conftest import (
    ASGI_FACES,
    Service,
    app_records,
    credential_scope,
    is_problem,
    parallel,
)
from tests.servers import AsgiServer, wait_for_port_file

Serve = Callable[..., Service]
Start = Callable[..., Service]
SECRET = "a per-deployment secret, 16+ bytes"
USERS = {"t1": "ann", "t2": "ann", "t3": "bob"}
"""Bearer tokens and the user each one authenticates: t2 is ann's refreshed token."""


class TokenBackend(AuthenticationBackend):
    """Bearer tokens to users, as an OAuth resource server would resolve them."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        """Return the token's user; no header: anonymous; an unknown token: refused."""
        header = conn.headers.get("authorization")
        if header is None:
            return None
        user = USERS.get(header.partition(" ")[2])
        if user is None:
            raise AuthenticationError("unknown token")
        return AuthCredentials(["authenticated"]), SimpleUser(user)


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header of `token`."""
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("face", ASGI_FACES)
def test_b8_a_refreshed_token_of_the_same_user_replays(face: str, start_service: Start) -> None:
    """Starlette's AuthenticationMiddleware outside: a retry with the user's refreshed token
    replays the first answer, the handler ran once; another user's same key runs again."""
    service = start_service(face, wrap=lambda app: AuthenticationMiddleware(app, TokenBackend()))
    first = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t1"))
    retry = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t2"))
    assert first.status_code == retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert service.recorder.calls["/payments"] == 1
    bob = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t3"))
    assert "idempotent-replayed" not in bob.headers
    assert bob.json()["n"] == 2
    scopes = sorted(r.identity.scope for r in service.records())
    assert len(scopes) == 2
    assert all(scope.startswith("p:") for scope in scopes)  # principals, not tokens


class SessionBackend(AuthenticationBackend):
    """The user named in the signed session cookie, as a login form would leave it."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        """Return the session's user, or None (anonymous)."""
        user = conn.session.get("user")
        return None if user is None else (AuthCredentials(["authenticated"]), SimpleUser(user))


def _session_app(calls: list[str], store: Any) -> Any:
    """A Starlette app with a login route, its payments behind the middleware, and session
    authentication outside it."""

    async def login(request: Request) -> Response:
        request.session["user"] = request.path_params["name"]
        return JSONResponse({"user": request.path_params["name"]})

    async def payments(request: Request) -> Response:
        calls.append(request.user.display_name)
        body = await request.json()
        return JSONResponse({"n": len(calls), "user": request.user.display_name, **body}, 201)

    app = Starlette(
        routes=[
            Route("/login/{name}", login, methods=["GET"]),
            Route("/payments", payments, methods=["POST"]),
        ]
    )
    guarded = AuthenticationMiddleware(IdempotencyMiddleware(app, store=store), SessionBackend())
    return SessionMiddleware(guarded, secret_key="test-session-key")


def test_b8_two_users_signed_in_by_session_cookie_never_share_a_key() -> None:
    """Two users authenticated by session cookie, no Authorization header, send the same key
    and body: two executions, each replays its own answer, none crosses."""
    calls: list[str] = []
    store = open_async_store("memory://")
    server = AsgiServer(_session_app(calls, store), on_close=store.aclose)
    try:
        with httpx.Client(base_url=server.url) as alice, httpx.Client(base_url=server.url) as bob:
            for client, name in ((alice, "alice"), (bob, "bob")):
                assert client.get(f"/login/{name}").status_code == 200
                assert "authorization" not in client.headers
            key = {"Idempotency-Key": "same"}
            first = {c: c.post("/payments", headers=key, json={"amount": 5}) for c in (alice, bob)}
            again = {c: c.post("/payments", headers=key, json={"amount": 5}) for c in (alice, bob)}
    finally:
        server.stop()
    assert sorted(calls) == ["alice", "bob"]
    assert first[alice].json()["user"] == "alice"
    assert first[bob].json()["user"] == "bob"
    for client in (alice, bob):
        assert first[client].status_code == 201
        assert "idempotent-replayed" not in first[client].headers
        assert again[client].headers["idempotent-replayed"] == "true"
        assert again[client].content == first[client].content


def test_b8_credential_scheme_case_and_white_space_do_not_matter(serve: Serve) -> None:
    """`Bearer x`, `bearer x` and `Bearer  x` are one scope; `Bearer y` is another."""
    service = serve()
    first = service.post("/payments", "k", json={}, headers={"Authorization": "Bearer x"})
    for variant in ("bearer x", "Bearer  x", "BEARER x"):
        same = service.post("/payments", "k", json={}, headers={"Authorization": variant})
        assert same.headers["idempotent-replayed"] == "true", variant
        assert same.content == first.content
    other = service.post("/payments", "k", json={}, headers={"Authorization": "Bearer y"})
    assert "idempotent-replayed" not in other.headers
    assert service.recorder.calls["/payments"] == 2
    assert len({r.identity.scope for r in service.records()}) == 2


def test_b8_b9_no_principal_and_no_credential_is_refused(serve: Serve) -> None:
    """A keyed request with neither gets 400 scope-missing problem+json: the handler does not
    run and nothing is stored. Without a key it runs untracked (B6)."""
    service = serve()
    for _ in range(2):
        refused = service.post("/payments", "k", json={}, anonymous=True)
        assert is_problem(refused, 400, "scope-missing")
        assert "Authorization" in refused.json()["detail"]
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []
    keyless = service.post("/payments", json={}, anonymous=True)
    assert keyless.status_code == 201
    assert service.recorder.calls["/payments"] == 1
    assert service.records() == []


def test_b8_anonymous_shared_per_route(serve: Serve) -> None:
    """RouteSettings(anonymous="shared") lets callers without a credential share the anonymous
    scope on that route (a retry replays); other routes still refuse them."""
    service = serve(routes={"/status/*": RouteSettings(anonymous="shared")})
    first = service.post("/status/201", "k", anonymous=True)
    again = service.post("/status/201", "k", anonymous=True)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/status"] == 1
    refused = service.post("/payments", "k", json={}, anonymous=True)
    assert is_problem(refused, 400, "scope-missing")
    assert service.recorder.calls["/payments"] == 0
    assert [r.identity.scope for r in service.records()] == ["anonymous"]
    # A caller with a credential has a scope of its own there, never the anonymous one.
    mine = service.post("/status/201", "k")
    assert "idempotent-replayed" not in mine.headers
    assert service.recorder.calls["/status"] == 2


def test_b8_anonymous_shared_for_the_app(serve: Serve) -> None:
    """With anonymous="shared" for the app, credential-less callers share one scope."""
    service = serve(anonymous="shared")
    first = service.post("/payments", "k", json={"a": 1}, anonymous=True)
    again = service.post("/payments", "k", json={"a": 1}, anonymous=True)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert service.recorder.calls["/payments"] == 1


@pytest.mark.parametrize("answer", [None, ""], ids=["none", "empty"])
def test_b8_a_scope_function_naming_no_scope_fails_closed(serve: Serve, answer: str | None) -> None:
    """A scope function that returns None or "" gets 400 scope-missing, never a 500 and never
    a shared scope; where it names one, the request runs."""

    def tenant(request: RequestView) -> str | None:
        value = request.header("X-Tenant")
        return value.decode() if value else answer

    service = serve(scope_function=tenant)
    refused = service.post("/payments", "k", json={})
    assert is_problem(refused, 400, "scope-missing")
    assert "scope function" in refused.json()["detail"]
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []
    ran = service.post("/payments", "k", json={}, headers={"X-Tenant": "acme"})
    assert ran.status_code == 201
    assert [r.identity.scope for r in service.records()] == ["acme"]


def test_b8_b35_the_stored_scope_is_an_hmac_with_the_configured_secret(
    face: str, start_service: Start, tmp_path: Path
) -> None:
    """With scope_secret set, the stored scope is "c:" + HMAC-SHA256(secret, the normalised
    credential): no plain hash of the credential, nor the token, is anywhere in the store."""
    path = tmp_path / "records.db"
    service = start_service(face, store_url=f"sqlite:///{path}", scope_secret=SECRET)
    service.post("/payments", "k", json={}, headers={"Authorization": "Bearer  x"})
    message = b"credential\0authorization\0bearer x"
    expected = "c:" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()
    assert expected == credential_scope(SECRET, "bearer x")
    records = service.store_call("list_records", limit=100)
    assert [r.identity.scope for r in records] == [expected]  # and no secret record
    stored = path.read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("records.db-*")
    )  # the database and its write-ahead log
    assert expected.encode() in stored
    for credential in (b"Bearer  x", b"Bearer x", b"bearer x", b"x"):
        assert hashlib.sha256(credential).hexdigest().encode() not in stored
        assert hashlib.sha256(credential).digest() not in stored
    assert b"Bearer" not in stored


def _serve_process(port_file: Path, store_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.http.scope_server", str(port_file), store_url],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def two_processes(real_store_url: str, tmp_path: Path) -> Iterator[list[str]]:
    """Two uvicorn processes of `scope_server` on one fresh store; their base URLs."""
    port_files = [tmp_path / "port-1", tmp_path / "port-2"]
    processes = [_serve_process(port_file, real_store_url) for port_file in port_files]
    try:
        ports = [
            wait_for_port_file(port_file, 30, alive=lambda p=process: p.poll() is None)  # type: ignore[misc]
            for port_file, process in zip(port_files, processes, strict=True)
        ]
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
            if process.stderr is not None:
                process.stderr.close()


def test_b8_processes_without_a_secret_share_the_one_kept_in_the_store(
    two_processes: list[str], real_store_url: str
) -> None:
    """Two server processes on one store, no scope_secret: their first requests, at once,
    create one secret between them, and a retry through the other process replays."""
    one, two = two_processes

    def pay(index: int) -> httpx.Response:
        url = (one, two)[index % 2]
        key = {"Idempotency-Key": f"race-{index}", **bearer("x")}
        return httpx.post(f"{url}/payments", headers=key, json={"i": index}, timeout=20)

    raced = parallel(8, pay)
    assert {r.status_code for r in raced} == {201}
    headers = {"Idempotency-Key": "k", **bearer("x")}
    first = httpx.post(f"{one}/payments", headers=headers, json={"amount": 1}, timeout=20)
    retry = httpx.post(f"{two}/payments", headers=headers, json={"amount": 1}, timeout=20)
    assert first.status_code == retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.json() == first.json()  # the first process's pid and count
    for index, answer in enumerate(raced):  # every raced key replays through the other process
        other = (two, one)[index % 2]
        key = {"Idempotency-Key": f"race-{index}", **bearer("x")}
        again = httpx.post(f"{other}/payments", headers=key, json={"i": index}, timeout=20)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == answer.json()
    store = open_store(real_store_url)
    try:
        records = store.list_records(limit=100)
    finally:
        store.close()
    secrets = [r for r in records if r.identity == SECRET_IDENTITY]
    assert len(secrets) == 1
    assert secrets[0].outcome is not None
    assert len(secrets[0].outcome) == 32
    assert len(app_records(records)) == 9
    assert len({r.identity.scope for r in app_records(records)}) == 1


def test_b8_a_lost_secret_fails_closed_and_restoring_it_recovers(
    face: str, start_service: Start, tmp_path: Path
) -> None:
    """The secret record deleted while records exist: a restarted middleware answers 503
    store-unavailable and makes no new secret; with the old secret set, retries replay."""
    store_url = f"sqlite:///{tmp_path / 'records.db'}"
    service = start_service(face, store_url=store_url)
    first = service.post("/payments", "k", json={"amount": 1})
    assert first.status_code == 201
    kept = service.store_call("get", SECRET_IDENTITY)
    assert kept.outcome is not None
    assert service.store_call("delete", SECRET_IDENTITY)  # `keys delete` refuses; this did not
    restarted = start_service(face, store_url=store_url, dedicated=True)
    lost = restarted.post("/payments", "k", json={"amount": 1})
    assert is_problem(lost, 503, "store-unavailable")
    assert lost.headers["retry-after"]
    assert restarted.recorder.calls["/payments"] == 0
    again = restarted.post("/payments", "k", json={"amount": 1})  # refused at once, again
    assert is_problem(again, 503, "store-unavailable")
    assert restarted.store_call("get", SECRET_IDENTITY) is None  # no new secret, no stuck claim
    restored = start_service(face, store_url=store_url, dedicated=True, scope_secret=kept.outcome)
    retry = restored.post("/payments", "k", json={"amount": 1})
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    assert restored.recorder.calls["/payments"] == 0


class RemoteUser:
    """A WSGI authentication layer: resolves the bearer token to REMOTE_USER, as a server's
    or a gateway's authentication would, or names the caller in `retrysafe.principal`."""

    def __init__(self, app: Any, key: str = "REMOTE_USER") -> None:
        self.app = app
        self.key = key

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        """Set the user of a known token and drop the credential; refuse an unknown one."""
        token = environ.pop("HTTP_AUTHORIZATION", "").partition(" ")[2]
        if token:
            if token not in USERS:
                start_response("401 Unauthorized", [("Content-Type", "text/plain")])
                return [b"unknown token"]
            environ[self.key] = USERS[token]
        return self.app(environ, start_response)


@pytest.mark.parametrize("key", ["REMOTE_USER", "retrysafe.principal"])
def test_b8_wsgi_remote_user_is_the_principal(start_service: Start, key: str) -> None:
    """Under WSGI (waitress), REMOTE_USER (or retrysafe.principal) names the caller: a refreshed
    token of the same user replays; another user runs again; no user at all is refused."""
    service = start_service("flask", wrap=lambda app: RemoteUser(app, key))
    first = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t1"))
    retry = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t2"))
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == first.content
    bob = service.post("/payments", "k", json={"amount": 1}, headers=bearer("t3"))
    assert json.loads(bob.content)["n"] == 2
    assert service.recorder.calls["/payments"] == 2
    assert all(r.identity.scope.startswith("p:") for r in service.records())
    assert is_problem(
        service.post("/payments", "k2", json={}, anonymous=True), 400, "scope-missing"
    )


def test_b8_remembered_scopes_equal_fresh_hmacs_past_the_bound() -> None:
    """The `Scoper` remembers the scopes it hashed (a replay skips the HMAC): what it returns
    is always the HMAC of that caller, by header name, and stays so once the bound clears it."""
    from retrysafe._http import Settings
    from retrysafe._http.scope import _KNOWN_LIMIT, Scoper, normalise_credential

    secret = b"s" * 32
    scoper = Scoper(secret)

    def view(headers: list[tuple[bytes, bytes]], principal: str | None = None) -> RequestView:
        return RequestView("POST", "/", b"", headers, {}, principal=principal)

    def expected(header: str, value: bytes) -> str:
        message = b"credential\0" + header.lower().encode() + b"\0" + normalise_credential(value)
        return "c:" + hmac.digest(secret, message, "sha256").hex()

    by_key = Settings(scope_header="X-API-Key")
    by_auth = Settings()
    for n in range(_KNOWN_LIMIT + 10):
        value = f"Bearer caller-{n % (_KNOWN_LIMIT // 2 + 3)}".encode()
        headers = [(b"x-api-key", value), (b"authorization", value)]
        for _ in range(2):  # hashed, then remembered
            assert scoper.scope_of(by_key, view(headers)) == expected("X-API-Key", value)
            assert scoper.scope_of(by_auth, view(headers)) == expected("Authorization", value)
    principal = "app.User:7"
    hashed = "p:" + hmac.digest(secret, b"principal\0" + principal.encode(), "sha256").hex()
    for _ in range(2):
        assert scoper.scope_of(by_auth, view([], principal)) == hashed
