"""`retrysafe proxy` in front of a service that authenticates with HTTP Digest (B8, B35).

A Digest client signs every send anew (a new `nc`, `cnonce` and `response`), so a proxy that
scoped by the whole `Authorization` value saw each resend of one request as a new caller and
the service charged twice. A Digest credential is scoped by its user, realm and nonce: the
resends of one challenge are one caller; another user, or a credential that only borrows a user
name, is another. Real proxy processes on the SQLite store, a real upstream on uvicorn.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.http.conftest import is_problem
from tests.integrations.servers import AsgiServer
from tests.proxy.conftest import Proxy

USERS = {"alice": "wonderland", "bob": "builder"}
REALM = "api"
_PARAM = re.compile(r'(\w+)="?([^",]+)"?')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - HTTP Digest's MD5


class DigestService:
    """An upstream that authenticates with HTTP Digest (RFC 7616, MD5, qop=auth) and counts
    the charges it makes per Idempotency-Key."""

    def __init__(self) -> None:
        self.nonces: set[str] = set()
        self.charges: Counter[str] = Counter()
        self._lock = threading.Lock()

    def user(self, request: Request) -> str | None:
        """Return the user whose Digest credential is valid for `request`, or None."""
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("digest "):
            return None
        p = dict(_PARAM.findall(header[7:]))
        if p.get("nonce") not in self.nonces or p.get("username") not in USERS:
            return None
        ha1 = _md5(f"{p['username']}:{REALM}:{USERS[p['username']]}")
        ha2 = _md5(f"{request.method}:{p['uri']}")
        expected = _md5(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
        return p["username"] if secrets.compare_digest(expected, p.get("response", "")) else None

    def challenge(self) -> Response:
        """Return a 401 with a new challenge."""
        nonce = secrets.token_hex(8)
        self.nonces.add(nonce)
        value = f'Digest realm="{REALM}", qop="auth", nonce="{nonce}", algorithm=MD5'
        return Response(status_code=401, headers={"WWW-Authenticate": value})

    def app(self) -> Starlette:
        """The service: POST /pay charges the user; GET /me names them."""

        async def pay(request: Request) -> Response:
            user = self.user(request)
            if user is None:
                return self.challenge()
            with self._lock:
                self.charges[request.headers.get("idempotency-key", "")] += 1
            return JSONResponse({"user": user, "charge": secrets.token_hex(4)}, status_code=201)

        async def me(request: Request) -> Response:
            user = self.user(request)
            return self.challenge() if user is None else JSONResponse({"user": user})

        return Starlette(routes=[Route("/pay", pay, methods=["POST"]), Route("/me", me)])


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[DigestService, str]]:
    """The Digest service on a free loopback port."""
    digest = DigestService()
    server = AsgiServer(digest.app())
    yield digest, server.url
    server.stop()


@pytest.fixture(scope="module")
def shared_and_reject(
    service: tuple[DigestService, str],
    proxies: Callable[[list[tuple[list[str], Path | None]]], list[Proxy]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, str]:
    """Two proxies to the service: `--anonymous shared`, and the default `reject`."""
    store = tmp_path_factory.mktemp("digest") / "store.db"
    common = ["--upstream", service[1], "--store", f"sqlite:///{store}?timeout=30", "--quiet"]
    shared, reject = proxies([([*common, "--anonymous", "shared"], None), (common, None)])
    return shared.url, reject.url


def _send_twice(client: httpx.Client, url: str) -> tuple[httpx.Response, httpx.Response, str]:
    """Send one request twice (the retry of one logical request, `client.send(request)`)."""
    key = f'"{uuid.uuid4()}"'
    headers = {"Idempotency-Key": key}
    request = client.build_request("POST", url, json={"amount": 500}, headers=headers)
    return client.send(request), client.send(request), key


def test_b8_digest_resends_of_one_request_replay(
    service: tuple[DigestService, str], shared_and_reject: tuple[str, str]
) -> None:
    """With `--anonymous shared`, the resend of a Digest request (a new nc, cnonce and
    response) is the same caller: it replays, and the service charged once."""
    digest, _ = service
    with httpx.Client(auth=httpx.DigestAuth("alice", USERS["alice"]), timeout=15) as client:
        first, retry, key = _send_twice(client, shared_and_reject[0] + "/pay")
    assert first.status_code == retry.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert retry.json() == first.json()
    assert digest.charges[key] == 1


def test_b8_digest_under_reject_once_the_client_has_its_challenge(
    service: tuple[DigestService, str], shared_and_reject: tuple[str, str]
) -> None:
    """Under the default `reject`, the first, credential-less send of a keyed request is
    refused with `scope-missing` (the proxy keeps its rule: no caller, no key), before the
    service could charge; a client that has its challenge (a keyless request first) sends
    its credential at once, and its resend replays."""
    digest, _ = service
    url = shared_and_reject[1]
    with httpx.Client(auth=httpx.DigestAuth("alice", USERS["alice"]), timeout=15) as client:
        refused = client.post(url + "/pay", json={}, headers={"Idempotency-Key": '"k-0"'})
        assert client.get(url + "/me").json() == {"user": "alice"}
        first, retry, key = _send_twice(client, url + "/pay")
    assert is_problem(refused, 400, "scope-missing")
    assert digest.charges['"k-0"'] == 0
    assert first.status_code == 201
    assert retry.headers.get("idempotent-replayed") == "true"
    assert digest.charges[key] == 1


def test_b8_b35_digest_users_and_borrowed_user_names_are_apart(
    service: tuple[DigestService, str], shared_and_reject: tuple[str, str]
) -> None:
    """Bob's request with alice's key runs for bob; a credential that names alice but was
    not made for her challenge (another nonce, a made-up response) is never answered with
    alice's response: the service refuses it."""
    digest, _ = service
    url = shared_and_reject[0] + "/pay"
    key = f'"{uuid.uuid4()}"'
    answers = {}
    for user, password in USERS.items():
        with httpx.Client(auth=httpx.DigestAuth(user, password), timeout=15) as client:
            answers[user] = client.post(url, json={"amount": 1}, headers={"Idempotency-Key": key})
    forged = (
        f'Digest username="alice", realm="{REALM}", nonce="guessed", uri="/pay", '
        f'response="{"0" * 32}", qop=auth, nc=00000001, cnonce="x"'
    )
    borrowed = httpx.post(
        url, json={"amount": 1}, headers={"Idempotency-Key": key, "Authorization": forged}
    )
    assert answers["alice"].json()["user"] == "alice"
    assert answers["bob"].json()["user"] == "bob"
    assert "idempotent-replayed" not in answers["bob"].headers
    assert borrowed.status_code == 401
    assert "idempotent-replayed" not in borrowed.headers
    assert digest.charges[key] == 2
