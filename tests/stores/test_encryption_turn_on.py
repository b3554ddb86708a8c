"""SPEC B8 when encryption at rest is turned on for a store already in use: the scope secret the
HTTP faces kept there in clear still scopes every request, a record that does not open fails no
key but its own, and the secret never changes value (docs/encryption.md)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from retrysafe import Identity, idempotent, open_async_store, open_store
from retrysafe._encryption import SEALING_OVERHEAD, sealed_key_id
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe.asgi import IdempotencyMiddleware as AsgiMiddleware
from retrysafe.stores.encrypted import EncryptedStore, Keyring
from retrysafe.wsgi import IdempotencyMiddleware as WsgiMiddleware
from tests.conftest import fresh_store_url
from tests.proxy.conftest import Recorder, start_proxies, stop_proxies, upstream_app
from tests.servers import AsgiServer

KEY_A, KEY_C = Keyring.generate_key(), Keyring.generate_key()
KEYS_ENV = "RS_TEST_TURN_ON_KEYS"
CALLER = {"authorization": "Bearer tenant-a"}
BODY = b"paid"


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store on each backend."""
    with fresh_store_url(str(request.param), request, tmp_path) as made:
        yield made


@pytest.fixture(params=["wsgi", "asgi"])
def face(request: pytest.FixtureRequest) -> str:
    """The sync face (`load_secret`) and the async one (`aload_secret`)."""
    return str(request.param)


@pytest.fixture
def encrypted(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Return a store URL with the option that names the keys (KEY_A) in the environment."""
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    return lambda url: f"{url}{'&' if '?' in url else '?'}encryption_key_env={KEYS_ENV}"


class App:
    """A payment endpoint that counts its runs, behind a new middleware on each `post` (a
    process started anew on the store URL)."""

    def __init__(self, face: str) -> None:
        self.face = face
        self.runs = 0

    def post(self, url: str, key: str) -> httpx.Response:
        headers = {**CALLER, "idempotency-key": f'"{key}"'}
        if self.face == "wsgi":
            return self._post_wsgi(url, headers)
        return anyio.run(self._post_asgi, url, headers)

    def _post_wsgi(self, url: str, headers: dict[str, str]) -> httpx.Response:
        def app(environ: Any, start_response: Any) -> list[bytes]:
            self.runs += 1
            start_response("201 Created", [("content-type", "text/plain")])
            return [BODY]

        with contextlib.closing(open_store(url)) as store:
            transport = httpx.WSGITransport(app=WsgiMiddleware(app, store=store))
            with httpx.Client(transport=transport, base_url="http://t") as client:
                return client.post("/pay", content=b"{}", headers=headers)

    async def _post_asgi(self, url: str, headers: dict[str, str]) -> httpx.Response:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await receive()
            self.runs += 1
            await send({"type": "http.response.start", "status": 201, "headers": []})
            await send({"type": "http.response.body", "body": BODY})

        store = open_async_store(url)
        try:
            transport = httpx.ASGITransport(AsgiMiddleware(app, store=store))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return await client.post("/pay", content=b"{}", headers=headers)
        finally:
            await store.aclose()


def raw_record(url: str, identity: Identity) -> Any:
    """The record of `identity` as the store keeps it, opened without keys."""
    with contextlib.closing(open_store(url)) as store:
        return store.get(identity)


def http_scopes(url: str) -> set[str]:
    """The scopes of the HTTP records in the store."""
    with contextlib.closing(open_store(url)) as store:
        return {r.identity.scope for r in store.list_records(namespace="http", limit=100)}


def test_b8_turning_encryption_on_keeps_the_scope_secret_stored_in_clear(
    url: str, face: str, encrypted: Callable[[str], str]
) -> None:
    """A store used by the middleware in clear, then opened with keys: a new key runs once and
    replays, scoped with the same secret, which stays as it was; the key stored in clear is
    refused (503) without running again, as a record that does not open is."""
    app = App(face)
    first, replay = app.post(url, "k-1"), app.post(url, "k-1")
    assert (first.status_code, replay.headers.get("idempotent-replayed")) == (201, "true")
    secret = raw_record(url, SECRET_IDENTITY).outcome
    assert len(secret) == 32  # in clear: stored before encryption was on

    new, again = app.post(encrypted(url), "k-2"), app.post(encrypted(url), "k-2")
    assert new.status_code == 201, new.text
    assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true")
    assert app.post(encrypted(url), "k-1").status_code == 503  # its outcome is in clear
    assert app.runs == 2
    assert raw_record(url, SECRET_IDENTITY).outcome == secret  # never changed, nor deleted
    assert len(http_scopes(url)) == 1  # both keys scoped with that one secret
    assert sealed_key_id(raw_record(url, Identity("http", *http_scopes(url), "k-2")).outcome)


def test_b8_records_that_do_not_open_leave_a_new_secret_to_be_made_sealed(
    url: str, face: str, encrypted: Callable[[str], str]
) -> None:
    """With no secret yet, a decorator's record stored in clear and one sealed with another key
    stop nothing: the new secret is stored sealed, and a second process reads the same one (its
    retry replays)."""

    with contextlib.closing(open_store(url)) as plain:

        @idempotent(plain, key="job", namespace="jobs")
        def job(job: str) -> str:
            return job

        job("j-1")  # in clear, before encryption was on
    with contextlib.closing(open_store(url, encryption=Keyring([KEY_C]))) as other:
        done = other.claim(Identity("jobs", "", "j-2"), "fp", lease=30, retention=600)
        other.complete(Identity("jobs", "", "j-2"), done.token, b"sealed with C", retention=600)
    app = App(face)
    first, retry = app.post(encrypted(url), "k-1"), app.post(encrypted(url), "k-1")
    assert first.status_code == 201, first.text
    assert (retry.status_code, retry.headers.get("idempotent-replayed")) == (201, "true")
    assert app.runs == 1
    sealed = raw_record(url, SECRET_IDENTITY).outcome
    assert sealed_key_id(sealed) is not None
    assert len(sealed) == 32 + SEALING_OVERHEAD


def test_b8_a_lost_secret_is_still_refused_when_records_were_scoped_with_it(
    url: str, face: str, encrypted: Callable[[str], str]
) -> None:
    """The check for records scoped with a secret reads them without opening their outcomes:
    with the secret gone and such records in clear, encryption on still refuses (503) rather
    than make a new secret, and the handler does not run."""
    app = App(face)
    assert app.post(url, "k-1").status_code == 201
    with contextlib.closing(open_store(url)) as store:
        assert store.delete(SECRET_IDENTITY)
    refused = app.post(encrypted(url), "k-2")
    assert refused.status_code == 503
    assert app.runs == 1
    assert raw_record(url, SECRET_IDENTITY) is None


def test_b8_the_proxy_on_an_encrypted_store_keeps_the_secret_stored_in_clear(
    tmp_path: Path, encrypted: Callable[[str], str]
) -> None:
    """`retrysafe proxy --store URL?encryption_key_env=...` on a store a proxy used in clear:
    a new key is forwarded once and replayed, with the secret of before."""
    recorder = Recorder()
    upstream = AsgiServer(upstream_app(recorder))
    url = f"sqlite:///{tmp_path / 'proxy.db'}"
    try:
        for store_url, key in ((url, "k-1"), (encrypted(url), "k-2")):
            (proxy,) = start_proxies([(["--upstream", upstream.url, "--store", store_url], None)])
            try:
                with httpx.Client(timeout=20, headers=CALLER) as client:
                    sent = {"idempotency-key": f'"{key}"'}
                    answers = [client.post(f"{proxy.url}/payments", headers=sent, json={})]
                    answers.append(client.post(f"{proxy.url}/payments", headers=sent, json={}))
            finally:
                stop_proxies([proxy])
            assert [a.status_code for a in answers] == [201, 201], answers[0].text
            assert answers[1].headers.get("idempotent-replayed") == "true"
    finally:
        upstream.stop()
    assert recorder.calls["/payments"] == 2
    with contextlib.closing(open_store(url)) as store:
        secret = store.get(SECRET_IDENTITY)
        assert secret is not None
        assert secret.outcome is not None
        assert len(secret.outcome) == 32
        scopes = {r.identity.scope for r in store.list_records(namespace="http", limit=10)}
    assert len(scopes) == 1


def test_b8_a_sealed_secret_opens_through_a_replay_cache(
    tmp_path: Path, encrypted: Callable[[str], str]
) -> None:
    """The secret is read behind a replay cache in front of the encrypted store too: sealed
    by one process, the next opens it and scopes alike."""
    url = encrypted(f"sqlite:///{tmp_path / 'cache.db'}") + "&replay_cache=10"
    app = App("wsgi")
    assert app.post(url, "k-1").status_code == 201
    retry = app.post(url, "k-1")
    assert (retry.status_code, retry.headers.get("idempotent-replayed")) == (201, "true")
    assert app.runs == 1
    with contextlib.closing(open_store(url)) as store:
        assert isinstance(store.store, EncryptedStore)  # type: ignore[attr-defined]
    assert sealed_key_id(raw_record(url.split("?")[0], SECRET_IDENTITY).outcome) is not None
