"""What the stores in this folder hold (B39): the users, requests, models and keys that
`fill_010.py` sent through retrysafe 0.1.0, and that the tests send again to the current code.

Imported by both releases as `tests.upgrade.data.cases`: a user's and a model's class name is
part of what 0.1.0 stored (a principal's name, a fingerprint), so it must be the same in both.
Nothing here imports retrysafe.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from pydantic import BaseModel

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]

RETENTION: Final = 20 * 365 * 24 * 3600.0
"""The records' retention: the test data stays live for twenty years."""
HASH_SEED: Final = "0"
"""The PYTHONHASHSEED 0.1.0 ran with: the order a set of str iterates in, so its fingerprint."""
NAMESPACE_INTS: Final = "upgrade.ints"
NAMESPACE_STRS: Final = "upgrade.strs"


class DisplayNameUser:
    """A user named only by a display name: 0.1.0 scoped it by that name (two users called
    Bob shared one scope); the current release refuses it (scope-unresolved)."""

    is_authenticated = True

    def __init__(self, display_name: str) -> None:
        self.display_name = display_name


class IntOrder(BaseModel):
    """A message whose set holds ints: their order is the same in every process."""

    id: str
    items: set[int]


class StrOrder(BaseModel):
    """A message whose set holds strs: their order depends on the process's hash seed."""

    id: str
    tags: set[str]


def int_order() -> IntOrder:
    """The int-set message, built from a list as a parsed message is."""
    return IntOrder(id="o-ints", items=[100, 3, 8, 0, 5])  # type: ignore[arg-type]


def str_order() -> StrOrder:
    """The str-set message."""
    return StrOrder(id="o-strs", tags=["red", "green", "blue", "amber"])  # type: ignore[arg-type]


USERS: Final[dict[str, object]] = {
    # OpenID Connect claims: 0.1.0 named them by `email`, the current release by `sub`.
    "ann": {"sub": "auth0|ann", "email": "ann@example.com"},
    # Claims whose e-mail is Ann's: 0.1.0 would have named this user as Ann.
    "mallory": {"sub": "auth0|mallory", "email": "mallory@example.com"},
    # A UUID: no principal in 0.1.0 (its credential scoped it), its own name now.
    "uuid": uuid.UUID("8c2f6a52-3f0e-4a57-9b0d-1f6f3c1e2a10"),
    # An id of 0: no principal in 0.1.0 (falsy), `builtins.dict:0` now.
    "zero": {"id": 0},
    # Named alike by both releases.
    "carol": "carol",
    "dave": "dave",
    # A display name only: scoped by it in 0.1.0, refused now.
    "bob": DisplayNameUser("Bob"),
}

# (user, Authorization, path, key, body), as 0.1.0 first answered them.
REQUESTS: Final = (
    ("ann", None, "/payments", "k-mapping", b'{"amount": 10}'),
    ("uuid", b"Bearer tok-uuid", "/payments", "k-uuid", b'{"amount": 20}'),
    ("zero", b"Bearer tok-zero", "/payments", "k-zero", b'{"amount": 30}'),
    ("carol", None, "/json-payments", "k-float", b'{"amount": 0.10000000000000001, "cur": "EUR"}'),
    ("carol", None, "/payments", "k-plain", b'{"amount": 40}'),
    ("bob", None, "/payments", "k-display", b'{"amount": 50}'),
)


def answer(release: str, key: str) -> bytes:
    """The body the payments app answers: which release ran the effect, for which key."""
    return json.dumps({"charge": f"{release}-{key}"}).encode()


def charged(release: str, order: IntOrder | StrOrder) -> dict[str, str]:
    """What the decorated charge returns."""
    return {"charged": f"{release}-{order.id}"}


def payments_app(release: str, calls: list[str]) -> ASGIApp:
    """The app behind the middleware: records each call (the effect), answers 201."""

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        key = dict(scope["headers"]).get(b"idempotency-key", b"").decode()
        calls.append(key)
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": answer(release, key)})

    return app


def authenticated(app: ASGIApp) -> ASGIApp:
    """Name `scope["user"]` from the `x-test-user` header, as an authentication layer does."""

    async def authenticate(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-test-user")
            if name is not None:
                scope = {**scope, "user": USERS[name.decode()]}
        await app(scope, receive, send)

    return authenticate


async def post(
    app: ASGIApp, path: str, key: str, body: bytes, *, user: str | None, credential: bytes | None
) -> tuple[int, bytes]:
    """Send one keyed POST through `app` (no server); return its status and body."""
    headers = [(b"idempotency-key", key.encode()), (b"content-type", b"application/json")]
    if user is not None:
        headers.append((b"x-test-user", user.encode()))
    if credential is not None:
        headers.append((b"authorization", credential))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
    }
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
