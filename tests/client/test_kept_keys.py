"""One operation, one key (SPEC B32): a request sent again, and its redirect by a 307 or 308 to
the same origin, keep the key generated for it; counted against the real middleware.

    client --> FaultRelay (loses the first answer, seeded) --> uvicorn
           --> AuthenticationMiddleware --> IdempotencyMiddleware (memory store) --> payments
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import requests
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from retrysafe import open_async_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentAdapter,
    IdempotentTransport,
    RetryPolicy,
    is_replay,
)
from retrysafe.demo._relay import FaultPlan, Relay, serve_asgi, serve_relay
from tests.client.conftest import Answer, Scripted
from tests.client.faces import FACES

# Seeded: the relay loses the first answer it forwards and delivers the next ones.
FIRST_LOST = FaultPlan(loss=0.5, seed=9)
BODY = b'{"amount": 500}'


@dataclass
class Payments:
    """A payments API that counts its charges; once one is made, `/v1` answers 307 to `/v2`
    (a front router moved the endpoint), and the first token expires (`t1`)."""

    charges: list[str] = field(default_factory=list)
    keys: list[tuple[str, str | None]] = field(default_factory=list)
    valid: set[str] = field(default_factory=lambda: {"t1", "t2"})

    async def charge(self, request: Request) -> Response:
        """Charge: the side effect, counted."""
        self.charges.append(request.url.path)
        self.valid.discard("t1")
        return JSONResponse({"id": len(self.charges)}, status_code=201)

    def app(self) -> Any:
        """The ASGI app: the router, then authentication, then the idempotency middleware."""
        routes = [Route(f"/{v}/payments", self.charge, methods=["POST"]) for v in ("v1", "v2")]
        idempotent = IdempotencyMiddleware(
            Starlette(routes=routes), store=open_async_store("memory://")
        )
        authenticated = AuthenticationMiddleware(
            idempotent, backend=_Tokens(self.valid), on_error=_unauthorized
        )

        async def router(scope: dict[str, Any], receive: Any, send: Any) -> None:
            headers = dict(scope.get("headers", []))
            key = headers.get(b"idempotency-key")
            self.keys.append((scope["path"], None if key is None else key.decode()))
            if self.charges and scope["path"] == "/v1/payments":
                moved = [(b"location", b"/v2/payments"), (b"content-length", b"0")]
                await send({"type": "http.response.start", "status": 307, "headers": moved})
                await send({"type": "http.response.body", "body": b""})
                return
            await authenticated(scope, receive, send)

        return router


class _Tokens(AuthenticationBackend):
    def __init__(self, valid: set[str]) -> None:
        self.valid = valid

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser]:
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.valid:
            raise AuthenticationError("bad token")
        return AuthCredentials(["authenticated"]), SimpleUser("alice")


def _unauthorized(conn: HTTPConnection, error: Exception) -> Response:
    return PlainTextResponse("unauthorized", status_code=401)


class RefreshingAuth(httpx.Auth):
    """httpx's documented custom scheme: on a 401, take a new token and send the request again."""

    def __init__(self) -> None:
        self.token = "t1"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Send `request` with the token; after a 401, with a new token."""
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:
            self.token = "t2"
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


@contextmanager
def lossy(payments: Payments) -> Iterator[Relay]:
    """The payments API behind a relay that loses its first answer."""
    with serve_asgi(payments.app(), lifespan="off") as url, serve_relay(url, FIRST_LOST) as relay:
        yield relay


def _generated(keys: list[str | None]) -> str:
    """The one generated key all of `keys` are (quoted UUIDv4s)."""
    assert len(set(keys)) == 1
    key = keys[0]
    assert key is not None
    assert uuid.UUID(key.strip('"')).version == 4
    return key


@pytest.mark.parametrize("name", ["sync", "async"])
def test_b32_an_auth_flow_that_sends_the_request_again_keeps_its_key(name: str) -> None:
    """The first answer is lost after the charge and the token expires; the retry gets a 401,
    and the auth flow sends the same request with a new token: it keeps its key, so the charge
    is replayed, not made again."""
    payments = Payments()
    url = "/v2/payments"  # never moved: only /v1 is redirected
    with lossy(payments) as relay:
        if name == "sync":
            transport = IdempotentTransport()
            with httpx.Client(transport=transport, auth=RefreshingAuth()) as client:
                response = client.post(relay.url + url, content=BODY)
        else:

            async def send() -> httpx.Response:
                transport = AsyncIdempotentTransport()
                async with httpx.AsyncClient(transport=transport, auth=RefreshingAuth()) as client:
                    return await client.post(relay.url + url, content=BODY)

            response = anyio.run(send)
        lost = relay.counters.lost
    assert lost == 1
    assert (response.status_code, response.extensions["idempotent_replayed"]) == (201, True)
    assert [answer.status_code for answer in response.history] == [401]
    assert payments.charges == [url]
    key = _generated([key for _, key in payments.keys])
    assert key == f'"{response.extensions["idempotency_key"]}"'
    assert len(payments.keys) == 3


@pytest.mark.parametrize("name", ["sync", "async"])
def test_b32_the_request_of_an_error_sent_again_keeps_its_key(name: str) -> None:
    """`client.send(error.request)` after a lost answer is the same operation: the same key,
    so the charge is replayed."""
    payments = Payments()
    policy = RetryPolicy(attempts=1)
    headers = {"Authorization": "Bearer t2"}
    with lossy(payments) as relay:
        url = relay.url + "/v2/payments"
        if name == "sync":
            with httpx.Client(transport=IdempotentTransport(policy=policy)) as client:
                with pytest.raises(httpx.RemoteProtocolError) as caught:
                    client.post(url, content=BODY, headers=headers)
                first = caught.value.request.extensions["idempotency_key"]
                response = client.send(caught.value.request)
        else:

            async def send() -> tuple[str, httpx.Response]:
                transport = AsyncIdempotentTransport(policy=policy)
                async with httpx.AsyncClient(transport=transport) as client:
                    with pytest.raises(httpx.RemoteProtocolError) as caught:
                        await client.post(url, content=BODY, headers=headers)
                    first = caught.value.request.extensions["idempotency_key"]
                    return first, await client.send(caught.value.request)

            first, response = anyio.run(send)
    assert (response.status_code, response.extensions["idempotent_replayed"]) == (201, True)
    assert response.extensions["idempotency_key"] == first
    assert payments.charges == ["/v2/payments"]
    assert _generated([key for _, key in payments.keys]) == f'"{first}"'


def _post_following(name: str, url: str, headers: dict[str, Any] | None = None) -> Any:
    """POST `BODY` to `url` with face `name`, following redirects; return its response."""
    if name == "sync":
        with httpx.Client(transport=IdempotentTransport(), follow_redirects=True) as client:
            return client.post(url, content=BODY, headers=headers)
    if name == "async":

        async def send() -> httpx.Response:
            transport = AsyncIdempotentTransport()
            async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
                return await client.post(url, content=BODY, headers=headers)

        return anyio.run(send)
    with requests.Session() as session:
        session.mount("http://", IdempotentAdapter())
        return session.post(url, data=BODY, headers=headers, timeout=10)


@pytest.mark.parametrize("name", FACES)
def test_b32_a_307_answering_a_retry_keeps_the_key_so_the_charge_is_not_made_twice(
    name: str,
) -> None:
    """The first answer is lost after the charge, and the retry is answered with a 307 to the
    same origin: the redirected POST keeps the key, so the server refuses it as a key already
    used for another request (422) instead of charging again."""
    payments = Payments()
    with lossy(payments) as relay:
        response = _post_following(name, relay.url + "/v1/payments", {"Authorization": "Bearer t2"})
    assert response.status_code == 422
    assert [answer.status_code for answer in response.history] == [307]
    assert payments.charges == ["/v1/payments"]
    assert [path for path, _ in payments.keys] == ["/v1/payments"] * 2 + ["/v2/payments"]
    _generated([key for _, key in payments.keys])


@pytest.fixture
def elsewhere(scripted: Scripted) -> Iterator[str]:
    """The scripted app served on a second port: another origin with the same scripts."""
    with serve_asgi(scripted.app, lifespan="off") as url:
        yield url


@pytest.mark.parametrize("name", FACES)
@pytest.mark.parametrize("status", [307, 308])
def test_b32_a_generated_key_follows_a_307_or_308_to_its_origin_only(
    name: str, status: int, scripted: Scripted, elsewhere: str
) -> None:
    """A generated key follows a 307 or 308 to the same origin, never one to another origin:
    that request gets a new key, even after a hop that kept the first one."""
    last_url, last = scripted.script(Answer(201))
    away = last_url.replace(scripted.base_url, elsewhere)
    hop_url, hop = scripted.script(Answer(307, {"location": away}))
    first_url, first = scripted.script(Answer(status, {"location": hop_url}))
    assert _post_following(name, first_url).status_code == 201
    kept = _generated([first.seen[0].key, hop.seen[0].key])
    assert _generated([last.seen[0].key]) != kept
    assert [seen.body for seen in (*first.seen, *hop.seen, *last.seen)] == [BODY] * 3


@pytest.mark.parametrize("name", FACES)
def test_b32_a_303_that_turns_a_post_into_a_get_sends_no_key(name: str, scripted: Scripted) -> None:
    """A 303 after a hop that kept the key turns the POST into a GET: it carries no key."""
    got_url, got = scripted.script(Answer(200))
    hop_url, hop = scripted.script(Answer(303, {"location": got_url}))
    first_url, first = scripted.script(Answer(307, {"location": hop_url}))
    assert _post_following(name, first_url).status_code == 200
    _generated([first.seen[0].key, hop.seen[0].key])
    assert (got.seen[0].method, got.seen[0].key) == ("GET", None)


@pytest.mark.parametrize("name", FACES)
def test_b32_a_callers_key_follows_every_redirect(
    name: str, scripted: Scripted, elsewhere: str
) -> None:
    """A key the caller set is theirs: it goes wherever the redirect goes, as given."""
    last, last_script = scripted.script(Answer(201))
    first, first_script = scripted.script(
        Answer(307, {"location": last.replace(scripted.base_url, elsewhere)})
    )
    response = _post_following(name, first, {"Idempotency-Key": "order-42"})
    assert response.status_code == 201
    assert [first_script.seen[0].key, last_script.seen[0].key] == ["order-42", "order-42"]


def test_b32_a_callers_key_given_as_bytes_is_kept(scripted: Scripted) -> None:
    """requests takes header values as bytes: the adapter reads such a key (latin-1) and every
    attempt sends it as given."""
    url, script = scripted.script(Answer(503), Answer(201))
    with requests.Session() as session:
        session.mount("http://", IdempotentAdapter(sleep=lambda _: None))
        response = session.post(url, data=BODY, headers={"Idempotency-Key": b'"k-1"'})
    assert (response.status_code, is_replay(response)) == (201, False)
    assert [seen.key for seen in script.seen] == ['"k-1"'] * 2
