"""B39 through the HTTP face, where a caller 0.1.0 named otherwise meets the rest of the flow: an
outcome held while the store is down (B19) and the per-scope cap (B36) work on the identity the
request was admitted on, the former one where that is where its record lives."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest

from retrysafe import AsyncStore, open_async_store, open_store
from retrysafe._http.scope import Scoper, principal_of
from retrysafe._http.settings import RequestView, Settings
from retrysafe._http.wsgi_io import PRINCIPAL_KEY
from retrysafe._record import Identity, State
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.observe import Observer, Operation, StoreCall
from retrysafe.wsgi import IdempotencyMiddleware as WSGIMiddleware
from tests.conftest import fresh_store_url
from tests.flow.conftest import wait_until
from tests.flow.relay import Relay

pytestmark = pytest.mark.services

SECRET = "s" * 32
CLAIMS = {"sub": "s-1", "email": "a@example.com"}  # 0.1.0 named this caller by its e-mail
BY_EMAIL = {"username": "a@example.com"}  # named as 0.1.0 named `CLAIMS`, by both releases
HEADERS = {"Authorization": "Bearer token"}


def _scopes() -> tuple[str, str]:
    """The scope this release gives the `CLAIMS` caller, and the one 0.1.0 gave it."""
    view = RequestView("POST", "/pay", b"", [], {}, principal=principal_of(CLAIMS))
    scope = Scoper(SECRET.encode()).scope_of(Settings(), view)
    former = getattr(scope, "former", None)
    assert isinstance(former, str)
    assert former != scope  # a caller this release names otherwise
    return str(scope), former


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        yield url


@pytest.mark.parametrize("fail_open", [False, True])
def test_b19_b39_a_held_outcome_answers_a_caller_named_otherwise_while_the_store_is_down(
    redis_url: str, fail_open: bool
) -> None:
    """The handler's completion is held (the store went away as it ran); the retry of that
    caller, whose former scope would be read first, gets the held outcome, never a 503 nor a
    second run (with `fail_open`)."""
    relay = Relay.before(redis_url)
    runs: list[int] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        runs.append(1)
        relay.cut()  # the store is gone from here on: the completion is held
        await send({"type": "http.response.start", "status": 201, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": f"charge #{len(runs)}".encode()})  # type: ignore[operator]

    async def main() -> list[httpx.Response]:
        url = relay.url(redis_url, f"prefix=b39-held-{fail_open}-{id(runs)}")
        store = open_async_store(url)
        middleware = IdempotencyMiddleware(
            app, store=store, scope_secret=SECRET, fail_open=fail_open
        )

        async def with_user(scope: dict, receive: object, send: object) -> None:
            scope["user"] = CLAIMS
            await middleware(scope, receive, send)

        transport = httpx.ASGITransport(app=with_user)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            headers = {**HEADERS, "Idempotency-Key": "k-1"}
            answers = [await client.post("/pay", content=b"{}", headers=headers) for _ in "12"]
        relay.restore()
        await store.aclose()
        return answers

    first, retry = anyio.run(main)
    assert (first.status_code, first.text) == (201, "charge #1")
    assert (retry.status_code, retry.text) == (201, "charge #1")
    assert retry.headers.get("idempotent-replayed") == "true"
    assert len(runs) == 1


def test_b36_b39_a_claim_taken_on_the_former_identity_is_released_when_the_cap_refuses(
    store_url: str,
) -> None:
    """A 0.1.0 process claimed a key under the caller's former scope and died; a retry takes it
    over there while the caller is at its cap (B36): the 429 releases that claim, so the retry
    after it runs the request."""
    current, former_scope = _scopes()
    former = Identity("http", former_scope, "k-2")
    gate, slow_runs, runs = anyio.Event(), anyio.Event(), []

    async def app(scope: dict, receive: object, send: object) -> None:
        runs.append(dict(scope["headers"])[b"idempotency-key"])
        if runs[-1] == b"slow":
            slow_runs.set()
            await gate.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def main(store: AsyncStore) -> tuple[int, object, int]:
        middleware = IdempotencyMiddleware(
            app, store=store, scope_secret=SECRET, max_in_flight_per_scope=1, wait=0
        )

        async def with_user(scope: dict, receive: object, send: object) -> None:
            scope["user"] = CLAIMS
            await middleware(scope, receive, send)

        transport = httpx.ASGITransport(app=with_user)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.post("/pay", content=b"{}", headers={**HEADERS, "Idempotency-Key": "fp"})
            stored = await store.get(Identity("http", current, "fp"))
            assert stored is not None  # admitted on its current scope: read its fingerprint
            lapsed = await store.claim(former, stored.fingerprint, lease=0.01, retention=3600)
            assert lapsed.acquired
            # the dead 0.1.0 holder's lease lapses
            await anyio.to_thread.run_sync(
                wait_until, lambda: store.clock.now() > lapsed.record.lease_expires_at
            )

            async def slow() -> None:
                await client.post(
                    "/pay", content=b"{}", headers={**HEADERS, "Idempotency-Key": "slow"}
                )

            async with anyio.create_task_group() as group:
                group.start_soon(slow)
                await slow_runs.wait()  # the caller is at its cap
                refused = await client.post(
                    "/pay", content=b"{}", headers={**HEADERS, "Idempotency-Key": "k-2"}
                )
                gate.set()
            after = await store.get(former)
            retried = await client.post(
                "/pay", content=b"{}", headers={**HEADERS, "Idempotency-Key": "k-2"}
            )
        return refused.status_code, None if after is None else after.state, retried.status_code

    async def run() -> tuple[int, object, int]:
        store = open_async_store(store_url)
        try:
            return await main(store)
        finally:
            await store.aclose()

    refused, left, retried = anyio.run(run)
    assert refused == 429
    assert left is not State.IN_FLIGHT  # the taken-over claim was released, not left held
    assert retried == 201
    assert runs.count(b"k-2") == 1


class _RestoreAfterAFailedGet(Observer):
    """Restores a cut relay once a `get` failed through it: the store blips on that one read."""

    def __init__(self, relay: Relay) -> None:
        self.relay, self.failed = relay, list[str]()

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        if call.name == "get" and call.error is not None and self.relay.is_cut:
            self.failed.append(type(call.error).__name__)
            self.relay.restore()


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_b20_b39_a_blip_on_the_former_record_read_is_a_503_never_a_second_run(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The caller's record is done under the name 0.1.0 gave it; the store fails the read of
    that record and is back for the claim that follows. The request is answered 503 (B20), not
    run again under the caller's current name, and its retry replays the one outcome."""
    _, former_scope = _scopes()
    view = RequestView("POST", "/pay", b"", [], {}, principal=principal_of(BY_EMAIL))
    assert str(Scoper(SECRET.encode()).scope_of(Settings(), view)) == former_scope
    runs: list[int] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        runs.append(1)
        await send({"type": "http.response.start", "status": 201, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": f"charge #{len(runs)}".encode()})  # type: ignore[operator]

    async def main(url: str, relay: Relay, watcher: Observer) -> list[httpx.Response]:
        store = open_async_store(relay.url(url))
        middleware = IdempotencyMiddleware(
            app, store=store, scope_secret=SECRET, observers=[watcher]
        )
        users = iter([BY_EMAIL, CLAIMS, CLAIMS])

        async def with_user(scope: dict, receive: object, send: object) -> None:
            scope["user"] = next(users)
            await middleware(scope, receive, send)

        transport = httpx.ASGITransport(app=with_user)
        headers = {**HEADERS, "Idempotency-Key": "k-blip"}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = [await client.post("/pay", content=b"{}", headers=headers)]
            relay.cut()  # until the next read fails: then the store is back
            answers += [await client.post("/pay", content=b"{}", headers=headers) for _ in "12"]
        await store.aclose()
        return answers

    with fresh_store_url(backend, request, tmp_path) as url:
        relay = Relay.before(url)
        watcher = _RestoreAfterAFailedGet(relay)
        try:
            first, blipped, retried = anyio.run(main, url, relay, watcher)
        finally:
            relay.close()
    assert (first.status_code, first.text) == (201, "charge #1")
    assert watcher.failed == ["StoreUnavailableError"]
    assert blipped.status_code == 503
    assert blipped.headers["content-type"] == "application/problem+json"
    assert (retried.status_code, retried.text) == (201, "charge #1")
    assert retried.headers.get("idempotent-replayed") == "true"
    assert runs == [1]


@pytest.mark.parametrize("backend", ["redis", "postgres"])
def test_b20_b39_the_wsgi_face_answers_a_blip_on_the_former_record_read_with_a_503(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The same blip through the WSGI middleware and a sync store (`SyncFlow`)."""
    runs: list[int] = []

    def app(environ: dict, start_response: Callable[..., object]) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [])
        return [f"charge #{len(runs)}".encode()]

    def post(wsgi: WSGIMiddleware, user: dict[str, str]) -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/pay", "CONTENT_LENGTH": "2",
            "wsgi.input": io.BytesIO(b"{}"), "HTTP_IDEMPOTENCY_KEY": "k-blip",
            "HTTP_AUTHORIZATION": HEADERS["Authorization"], PRINCIPAL_KEY: user,
        }  # fmt: skip
        started: list[str] = []
        body = b"".join(wsgi(environ, lambda status, _: started.append(status)))
        return started[0], body

    with fresh_store_url(backend, request, tmp_path) as url:
        relay = Relay.before(url)
        watcher = _RestoreAfterAFailedGet(relay)
        store = open_store(relay.url(url))
        wsgi = WSGIMiddleware(app, store=store, scope_secret=SECRET, observers=[watcher])
        try:
            first = post(wsgi, BY_EMAIL)
            relay.cut()  # until the next read fails: then the store is back
            blipped, retried = post(wsgi, CLAIMS), post(wsgi, CLAIMS)
        finally:
            store.close()
            relay.close()
    assert first == ("201 Created", b"charge #1")
    assert watcher.failed == ["StoreUnavailableError"]
    assert blipped[0].startswith("503")
    assert retried == ("201 Created", b"charge #1")
    assert runs == [1]
