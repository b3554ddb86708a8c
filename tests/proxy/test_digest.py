"""`retrysafe proxy` in front of a service that authenticates with HTTP Digest (B8, B35).

The proxy checks no credential, so it names a caller by the whole credential header. A Digest
credential's user name, realm and nonce are no secret (a 401 challenge hands out the nonce, and
under `--anonymous shared` the proxy replays a stored challenge to anyone with the key): a
credential that borrows them with a made-up response is another caller and never gets the
user's stored response. The price, as docs/proxy.md says: a Digest client signs every send
anew, so each send is a new caller. Real proxy processes on the SQLite store, a real upstream
on uvicorn.
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


def test_b35_a_forged_digest_credential_with_a_replayed_nonce_gets_no_stored_response(
    service: tuple[DigestService, str], shared_and_reject: tuple[str, str]
) -> None:
    """Under `--anonymous shared`, alice's first, credential-less try stores the service's
    401 challenge under the shared scope, and anyone with her key gets it replayed, nonce and
    all. A credential forged from it (her user name, the realm, that nonce, a made-up
    response) is another caller: the service refuses it, and alice's 201 is never replayed."""
    digest, _ = service
    url = shared_and_reject[0] + "/pay"
    key = f'"{uuid.uuid4()}"'
    headers = {"Idempotency-Key": key}
    with httpx.Client(auth=httpx.DigestAuth("alice", USERS["alice"]), timeout=15) as client:
        alice = client.post(url, json={"amount": 500}, headers=headers)
    probe = httpx.post(url, json={"amount": 500}, headers=headers, timeout=15)
    match = re.search(r'nonce="([^"]+)"', probe.headers.get("www-authenticate", ""))
    assert match is not None, probe.headers
    forged = (
        f'Digest username="alice", realm="{REALM}", nonce="{match[1]}", uri="/pay", '
        f'response="{"0" * 32}", qop=auth, nc=00000001, cnonce="x"'
    )
    stolen = httpx.post(
        url, json={"amount": 500}, headers={**headers, "Authorization": forged}, timeout=15
    )
    assert alice.status_code == 201
    assert probe.status_code == 401
    assert stolen.status_code == 401, stolen.text
    assert "idempotent-replayed" not in stolen.headers
    assert "charge" not in stolen.text
    assert digest.charges[key] == 1


def test_b8_each_digest_send_is_a_new_caller_and_the_same_credential_replays(
    service: tuple[DigestService, str], shared_and_reject: tuple[str, str]
) -> None:
    """Under the default `reject`, a keyed first try without a credential is refused with
    `scope-missing` before the service could challenge it. A client that has its challenge
    signs every send anew (a new nc, cnonce and response): the proxy sees the resend of one
    request as a new caller, which the service runs again, as docs/proxy.md says. The very
    same credential sent again is the same caller, and replays."""
    digest, _ = service
    url = shared_and_reject[1] + "/pay"
    with httpx.Client(auth=httpx.DigestAuth("alice", USERS["alice"]), timeout=15) as client:
        refused = client.post(url, json={}, headers={"Idempotency-Key": '"k-0"'})
        assert client.get(shared_and_reject[1] + "/me").json() == {"user": "alice"}
        key = f'"{uuid.uuid4()}"'
        request = client.build_request("POST", url, json={}, headers={"Idempotency-Key": key})
        first = client.send(request)
        credential = request.headers["authorization"]
        resent = client.send(request)
    assert request.headers["authorization"] != credential
    again = httpx.post(
        url, json={}, headers={"Idempotency-Key": key, "Authorization": credential}, timeout=15
    )
    assert is_problem(refused, 400, "scope-missing")
    assert digest.charges['"k-0"'] == 0
    assert first.status_code == resent.status_code == 201
    assert "idempotent-replayed" not in resent.headers
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert digest.charges[key] == 2
