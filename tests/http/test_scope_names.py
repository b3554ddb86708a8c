"""What names a caller (B8, B35): stable identifiers only, values a scope can be, Digest.

A user is named by a stable, unique identifier, never a display name or an e-mail address; an
object with none fails closed with the 500 `scope-unresolved` problem. A `scope_function`
returns a str or nothing; anything else fails closed on every store. A Digest credential is
scoped as a whole value, as any credential. On uvicorn and waitress, on real stores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    UnauthenticatedUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection

from retrysafe._http import RequestView, Settings, scope
from retrysafe._http.scope import Scoper, principal_of
from tests.conftest import fresh_store_url
from tests.http.conftest import Service, is_problem

Start = Callable[..., Service]
SECRET = "a per-deployment secret, 16+ bytes"


class JWTUser(BaseUser):
    """A token's user, as an app writes one: its display name is not unique, and it does not
    implement `identity` (Starlette's `BaseUser` leaves it abstract)."""

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


class SubjectUser(JWTUser):
    """A token's user with its subject claim (`sub`): stable and unique."""

    def __init__(self, sub: str, name: str) -> None:
        super().__init__(name)
        self.sub = sub


USERS: dict[str, BaseUser] = {
    "alice": JWTUser("Alex Smith"),
    "mallory": JWTUser("Alex Smith"),
    "sub-1": SubjectUser("u-1", "Alex Smith"),
    "sub-2": SubjectUser("u-2", "Alex Smith"),
}


class Backend(AuthenticationBackend):
    """Bearer tokens to `USERS`."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        """Return the token's user."""
        token = conn.headers.get("authorization", "").partition(" ")[2]
        user = USERS.get(token)
        return None if user is None else (AuthCredentials(["authenticated"]), user)


def bearer(token: str) -> dict[str, str]:
    """Return the Authorization header of `token`."""
    return {"Authorization": f"Bearer {token}"}


def test_b8_b35_a_display_name_never_names_a_caller(start_service: Start) -> None:
    """Two users who share a display name and have no stable identifier are refused with the
    500 `scope-unresolved` problem (nothing runs, nothing is stored), never one scope where
    one replays the other's response; users with a subject (`sub`) are two callers."""
    service = start_service(
        "starlette",
        wrap=lambda app: AuthenticationMiddleware(app, Backend()),
        scope_secret=SECRET,
    )
    alice = service.post("/payments", "k", json={"amount": 1}, headers=bearer("alice"))
    mallory = service.post("/payments", "k", json={"amount": 1}, headers=bearer("mallory"))
    assert is_problem(alice, 500, "scope-unresolved"), alice.text
    assert is_problem(mallory, 500, "scope-unresolved")
    assert "JWTUser" in alice.json()["detail"]
    assert "identity" in alice.json()["detail"]
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []
    first = service.post("/payments", "k", json={"amount": 1}, headers=bearer("sub-1"))
    second = service.post("/payments", "k", json={"amount": 1}, headers=bearer("sub-2"))
    assert first.json()["n"] == 1
    assert second.json()["n"] == 2
    assert "idempotent-replayed" not in second.headers


@dataclasses.dataclass
class Guest:
    """What an app's own hook sets for a visitor who is not logged in: an empty id."""

    id: None = None
    display_name: str = "Guest"


@dataclasses.dataclass
class Member:
    """A user an app's own hook names by something that is not a stable identifier."""

    uid: str
    display_name: str


class Anonymous:
    """A user class that says it is not authenticated, by a method (older Django)."""

    def is_authenticated(self) -> bool:
        return False


def test_b8_principals_are_named_by_stable_identifiers_only() -> None:
    """Stable identifiers name a user (with its class); unauthenticated users and objects
    whose identifiers are empty name none; a user with no identifier, or a value that names
    everyone (True), is refused with a `ScopeError` that says what to add."""
    user_id = uuid.UUID(int=7)
    assert principal_of(SimpleUser("ann")) == "starlette.authentication.SimpleUser:identity=ann"
    assert principal_of(SubjectUser("u-1", "Ann")) == f"{__name__}.SubjectUser:sub=u-1"
    assert principal_of({"sub": "auth0|1", "email": "a@x"}) == "builtins.dict:auth0|1"
    assert principal_of(user_id) == f"uuid.UUID:{user_id}"
    assert principal_of(0) == "builtins.int:0"
    for nobody in (None, "", UnauthenticatedUser(), Anonymous(), Guest(), {"id": None}):
        assert principal_of(nobody) is None, nobody
    for nameless in (
        object(),
        Member("u-1", "Ann"),
        JWTUser("Ann"),
        {"email": "a@x", "display_name": "Ann"},
        True,
    ):
        with pytest.raises(scope.ScopeError, match="stable identifier"):
            principal_of(nameless)
    with pytest.raises(scope.ScopeError, match="authenticated"):
        principal_of(_AuthenticatedGuest())


class _AuthenticatedGuest(Guest):
    """Says it is authenticated, but its id is empty."""

    is_authenticated = True


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store on each backend whose keys are encoded as text."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


def tenant_id(request: RequestView) -> Any:
    """A scope function that returns the tenant's number: not a str."""
    value = request.header("X-API-Key")
    return None if value is None else {b"key-a": 1, b"key-b": 2}.get(value)


@pytest.mark.parametrize("face", ["starlette", "flask"])
def test_b8_a_scope_function_returning_a_non_str_fails_closed(
    start_service: Start, store_url: str, face: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A scope function that returns an int gets the 500 `scope-unresolved` problem naming
    the function and the type, logged, on every store (not a plain 500 from the store's
    encoding on some and a working scope on others): nothing runs, nothing is stored."""
    service = start_service(face, store_url=store_url, scope_function=tenant_id)
    with caplog.at_level(logging.ERROR, logger="retrysafe.http"):
        answer = service.post("/payments", "k", json={}, headers={"X-API-Key": "key-a"})
    assert is_problem(answer, 500, "scope-unresolved"), answer.text
    assert "tenant_id" in answer.json()["detail"]
    assert "int" in answer.json()["detail"]
    assert any("tenant_id" in r.getMessage() for r in caplog.records)
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []


def _digest(**fields: str) -> bytes:
    """Return an HTTP Digest credential with `fields` over the defaults."""
    values = {
        "username": "alice",
        "realm": "api",
        "nonce": "n-1",
        "uri": "/pay",
        "response": hashlib.md5(str(fields).encode()).hexdigest(),  # noqa: S324
        "qop": "auth",
        "nc": "00000001",
        "cnonce": "c-1",
        "algorithm": "MD5",
        **fields,
    }
    quoted = {"username", "realm", "nonce", "uri", "response", "cnonce"}
    parts = [f'{k}="{v}"' if k in quoted else f"{k}={v}" for k, v in values.items()]
    return ("Digest " + ", ".join(parts)).encode()


def _scope_of(credential: bytes, scoper: Scoper | None = None) -> str | None:
    request = RequestView("POST", "/pay", b"", ((b"authorization", credential),), {})
    return (scoper or Scoper(SECRET.encode())).scope_of(Settings(), request)


def test_b35_a_digest_credential_is_scoped_as_a_whole() -> None:
    """A Digest credential is one caller as a whole value, as any other credential: its user
    name, realm and nonce are no secret (a 401 challenge hands out the nonce, and under
    `anonymous="shared"` is replayed to anyone with the key), so a credential that borrows
    alice's with a made-up response is another caller, never answered with alice's
    responses. Her own resend, signed anew, is another caller too (docs/http.md#scope); the
    white space is folded as in any credential."""
    first = _scope_of(_digest())
    assert first is not None
    assert first.startswith("c:")
    assert _scope_of(_digest()) == first
    assert _scope_of(_digest().replace(b", ", b",   ")) == first
    forged = _digest(response="0" * 32)
    resent = _digest(nc="00000002", cnonce="c-2")
    scopes = {_scope_of(value) for value in (forged, resent, _digest(username="bob"))}
    assert len(scopes) == 3
    assert first not in scopes


def test_b8_a_long_digest_credential_is_one_pass_and_one_scope_per_value() -> None:
    """A client's long Digest header, well-formed or not, is scoped as its whole value, never
    parsed (a parse that backtracks would hold the event loop for seconds per request, before
    any authentication): two values that differ in their last byte are two scopes, the same
    value is one."""
    long = 1 << 20
    hostile = b"Digest " + b"a" * long
    signed = _digest(response="0" * long)
    for value in (hostile, signed):
        other = value[:-2] + b"b" + value[-1:]
        assert _scope_of(value) == _scope_of(bytes(value)) != _scope_of(other)


class EarlySimpleUser(BaseUser):
    """Starlette's `SimpleUser` as Starlette 0.40 (retrysafe's floor) defines it: no
    `identity`, which `BaseUser` leaves abstract; 0.41 and later return `username` there."""

    __module__ = "starlette.authentication"
    __qualname__ = "SimpleUser"

    def __init__(self, username: str) -> None:
        self.username = username

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.username


def test_b8_b39_a_starlette_user_keeps_its_name_across_starlette_releases() -> None:
    """Starlette's `SimpleUser` gained `identity` in 0.41: the user is one name before and
    after an upgrade of Starlette (its records found, never run again), and where 0.1.0 named
    it by `username` under the older Starlette, that name is kept as the former (B39)."""
    now, early = principal_of(SimpleUser("ann")), principal_of(EarlySimpleUser("ann"))
    assert now == early == "starlette.authentication.SimpleUser:identity=ann"
    former = "starlette.authentication.SimpleUser:username=ann"
    assert getattr(early, "former", None) == former
    # the installed Starlette's own: 0.1.0 named it alike where it defines `identity`
    assert getattr(now, "former", None) == (None if "identity" in vars(SimpleUser) else former)
