"""The scopes a middleware remembers hold a bounded size, whatever credentials its callers send
(B8, B36), on real servers: uvicorn for ASGI, waitress for WSGI.

A `Scoper` remembers the scopes it hashed, by principal or credential, so a replay skips the
HMAC. It keeps no principal or credential longer than 4,096 characters (hashed on every
request instead) and no more than 4 MiB of them in all: a client sending long, distinct
`Authorization` headers, valid or not, cannot make a process hold them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from retrysafe._http import RequestView, Scoper, Settings
from tests.http.conftest import CALLER, Service, credential_scope

Serve = Callable[..., Service]
SECRET = "a per-deployment secret, 16+ bytes"
LONGEST = 4096
"""The longest principal or credential a `Scoper` remembers, in characters (docs/http.md)."""
BUDGET = 4 * 1024 * 1024
"""What the principals and credentials a `Scoper` remembers hold in all, at most."""


def held(scoper: Scoper) -> list[int]:
    """Return the size of each principal or credential `scoper` remembers."""
    return [len(known[1]) for known in scoper._known]


def test_b8_b36_long_credentials_are_scoped_each_time_and_never_held(serve: Serve) -> None:
    """Distinct 10 KB credentials each get their own scope and replay as always, but none of
    them stays in the scope memo; the test client's short credential does."""
    service = serve(scope_secret=SECRET)
    tag = uuid.uuid4().hex
    credentials = [f"Bearer {tag}-{i:03d}-" + "A" * 10_000 for i in range(40)]
    keys = [str(uuid.uuid4()) for _ in credentials]
    for key, credential in zip(keys, credentials, strict=True):
        response = service.post("/payments", key, headers={"Authorization": credential}, json={})
        assert response.status_code == 201, response.text
    service.post("/payments", str(uuid.uuid4()), json={})  # CALLER, a normal credential
    sizes = held(service.middleware._scoper)
    assert max(sizes) <= LONGEST, f"a {max(sizes)}-byte credential is held"
    assert sum(sizes) <= BUDGET
    assert any(known[1] == CALLER.encode() for known in service.middleware._scoper._known)

    # The results are those of a remembered scope: the same long credential replays, another
    # one is another caller, and the stored scope is the HMAC of the normalised credential.
    replay = service.post("/payments", keys[0], headers={"Authorization": credentials[0]}, json={})
    assert replay.headers.get("idempotent-replayed") == "true"
    other = service.post("/payments", keys[0], headers={"Authorization": credentials[1]}, json={})
    assert other.status_code == 201
    assert "idempotent-replayed" not in other.headers
    scopes = {r.identity.scope for r in service.records() if r.identity.key == keys[0]}
    normalised = "bearer " + credentials[0].split(" ", 1)[1]
    assert credential_scope(SECRET, normalised) in scopes
    assert credential_scope(SECRET, "bearer " + credentials[1].split(" ", 1)[1]) in scopes
    assert max(held(service.middleware._scoper)) <= LONGEST


def test_b8_b36_the_scope_memo_holds_at_most_its_byte_budget() -> None:
    """Credentials just under the longest remembered fill the memo to its byte budget, not
    4,096 of them: it starts over first. Each scope is the one computed without the memo."""
    scoper = Scoper(SECRET.encode())
    settings = Settings(scope_secret=SECRET)
    most = 0
    for i in range(2000):
        credential = f"Bearer {i:05d}-".encode() + b"B" * (LONGEST - 20)
        request = RequestView("POST", "/", b"", [(b"authorization", credential)], {})
        scope = scoper.scope_of(settings, request)
        assert scope == credential_scope(SECRET, "bearer " + credential[7:].decode())
        assert scoper.scope_of(settings, request) == scope  # remembered, or hashed again
        most = max(most, sum(held(scoper)))
    assert most <= BUDGET
    assert most > BUDGET // 2  # it did remember them, up to the budget
