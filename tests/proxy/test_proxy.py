"""`retrysafe proxy` as a real process in front of a real upstream: forwarding and B6-B15."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

import retrysafe
from retrysafe._flow.secret import SECRET_IDENTITY
from tests.proxy.conftest import Proxy, Recorder, Upstream, upstream_entered
from tests.servers import refused_port

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
CALLER = {"Authorization": "Bearer proxy-test"}
"""The credential clients send: the proxy scopes keys by it (B8)."""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working directory of the default proxy (where its SQLite file goes)."""
    return tmp_path_factory.mktemp("proxy")


@pytest.fixture(scope="module")
def started(upstream: Upstream, proxies: Start, workdir: Path) -> dict[str, Proxy]:
    """Every proxy this module uses, started at once."""
    names = ["default", "wait0", "require", "unreachable", "shared"]
    running = proxies(
        [
            (["--upstream", upstream.url, "--retention", "600", "--lease", "5"], workdir),
            (["--upstream", upstream.url, "--store", "memory://", "--wait", "0",
              "--scope-header", "X-API-Key"], None),
            (["--upstream", upstream.url, "--store", "memory://", "--require-key"], None),
            (["--upstream", f"http://127.0.0.1:{refused_port()}", "--store", "memory://"], None),
            (["--upstream", upstream.url, "--store", "memory://", "--anonymous", "shared"], None),
        ]
    )  # fmt: skip
    return dict(zip(names, running, strict=True))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for the test, sending `CALLER`."""
    with httpx.Client(timeout=20, headers=CALLER) as client_:
        yield client_


def key() -> dict[str, str]:
    """Return an Idempotency-Key header with a fresh key."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def is_problem(response: httpx.Response, status: int, slug: str) -> bool:
    """Return whether `response` is a problem+json `slug` with `status`."""
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and response.headers["cache-control"] == "no-store"
        and response.json()["type"].endswith("#" + slug)
        and response.json()["status"] == status
    )


def test_b10_duplicates_replay_and_upstream_runs_once(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client, workdir: Path
) -> None:
    """A retried POST replays the first response; the upstream ran once (default SQLite store)."""
    url = started["default"].url
    headers = key()
    first = client.post(f"{url}/payments", headers=headers, content=b'{"amount":1}')
    second = client.post(f"{url}/payments", headers=headers, content=b'{"amount":1}')
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["location"] == first.headers["location"] == "/p/1"
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert recorder.calls["/payments"] == 1
    assert (workdir / "retrysafe.db").exists()
    # Without a key, or with GET, the proxy only forwards.
    client.post(f"{url}/payments", content=b"{}")
    client.get(f"{url}/payments")
    assert recorder.calls["/payments"] == 3


def test_hop_by_hop_headers_are_dropped_both_ways(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client
) -> None:
    """Hop-by-hop headers, and headers the Connection header names, cross no hop."""
    response = client.get(
        f"{started['default'].url}/headers",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "1",
            "Keep-Alive": "300",
            "Proxy-Authorization": "Basic eA==",
            "TE": "trailers",
            "X-End-To-End": "yes",
        },
    )
    seen = {name.lower() for name, _ in response.json()["headers"]}
    assert seen.isdisjoint({"x-secret-hop", "keep-alive", "proxy-authorization", "te"})
    assert "x-end-to-end" in seen
    assert response.headers["x-end"] == "kept"
    for name in ("keep-alive", "proxy-authenticate", "upgrade", "x-hop"):
        assert name not in response.headers


def test_host_and_x_forwarded_headers_are_set(
    started: dict[str, Proxy], upstream: Upstream, recorder: Recorder, client: httpx.Client
) -> None:
    """Host is the upstream's; X-Forwarded-For is appended to, Proto and Host say the client's."""
    proxy_url = started["default"].url
    response = client.get(
        f"{proxy_url}/headers",
        headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Host": "spoofed.example"},
    )
    headers = dict(response.json()["headers"])
    assert headers["host"] == upstream.url.removeprefix("http://")
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == proxy_url.removeprefix("http://")


def test_unreachable_upstream_gives_502_problem(
    started: dict[str, Proxy], client: httpx.Client
) -> None:
    """An upstream nobody listens on is a 502 problem+json, and a keyed retry may run later."""
    url = started["unreachable"].url
    headers = key()
    for _ in range(2):  # 502 is not stored: the key is released for the retry
        response = client.post(f"{url}/payments", headers=headers, content=b"{}")
        assert is_problem(response, 502, "upstream-unreachable")
        assert "idempotent-replayed" not in response.headers
    assert is_problem(client.get(f"{url}/payments"), 502, "upstream-unreachable")


def test_b14_wait_0_answers_409_to_a_duplicate_in_flight(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client
) -> None:
    """With --wait 0 a duplicate of a request still at the upstream gets 409 at once."""
    url = started["wait0"].url
    headers = {**key(), "X-API-Key": "tenant-a"}  # this proxy scopes by X-API-Key
    results: list[httpx.Response] = []
    first = threading.Thread(
        target=lambda: results.append(httpx.post(f"{url}/gate", headers=headers, timeout=20))
    )
    first.start()
    try:
        upstream_entered(recorder)
        duplicate = client.post(f"{url}/gate", headers=headers)
        assert is_problem(duplicate, 409, "request-in-flight")
        assert duplicate.headers["retry-after"]
    finally:
        recorder.gate.set()
        first.join(20)
    assert results[0].status_code == 201
    replay = client.post(f"{url}/gate", headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == results[0].content
    assert recorder.calls["/gate"] == 1


def test_b8_scope_header_separates_keys(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client
) -> None:
    """With --scope-header X-API-Key one key from two API keys runs twice, never crossing."""
    url = started["wait0"].url
    shared = key()
    for api_key in ("tenant-a", "tenant-b", "tenant-a"):
        client.post(f"{url}/payments", headers={**shared, "X-API-Key": api_key}, content=b"{}")
    assert recorder.calls["/payments"] == 2


def test_b6_require_key_gives_400(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client
) -> None:
    """With --require-key a POST without a key is a 400 problem and never reaches the upstream."""
    url = started["require"].url
    assert is_problem(client.post(f"{url}/payments", content=b"{}"), 400, "key-required")
    assert recorder.calls["/payments"] == 0
    assert client.get(f"{url}/payments").status_code == 201  # GET is not covered: forwarded
    assert client.post(f"{url}/payments", headers=key(), content=b"{}").status_code == 201
    assert recorder.calls["/payments"] == 2


def _chunks(count: int, size: int) -> Iterator[bytes]:
    for index in range(count):
        yield bytes([97 + index % 26]) * size


@pytest.mark.parametrize("keyed", [False, True], ids=["untracked", "tracked"])
def test_streamed_bodies_pass(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client, keyed: bool
) -> None:
    """A chunked request body and a streamed response cross the proxy whole, tracked or not."""
    import hashlib

    url = started["default"].url
    headers = key() if keyed else {}
    sent = b"".join(_chunks(40, 8192))
    upload = client.post(f"{url}/upload", headers=headers, content=_chunks(40, 8192))
    assert upload.status_code == 201
    assert upload.json()["size"] == len(sent)
    assert upload.json()["sha256"] == hashlib.sha256(sent).hexdigest()
    size = 3 * 1024 * 1024  # past the storable limit too
    with client.stream("POST", f"{url}/stream?size={size}&chunks=64", headers=key()) as streamed:
        received = b"".join(streamed.iter_bytes())
    assert streamed.status_code == 201
    assert len(received) == size
    assert received[:1] == b"A"
    assert received[-1:] == bytes([65 + 63 % 26])


def test_b8_a_keyed_request_without_a_credential_is_refused_by_default(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client, workdir: Path
) -> None:
    """Without --anonymous, a keyed POST with no Authorization is a 400 scope-missing problem:
    the upstream never sees it and nothing is stored; keyless, it is forwarded untracked."""
    url = started["default"].url
    before = _records(workdir / "retrysafe.db")
    with httpx.Client(timeout=20) as anonymous:
        refused = anonymous.post(f"{url}/payments", headers=key(), content=b"{}")
        assert is_problem(refused, 400, "scope-missing")
        assert anonymous.post(f"{url}/payments", content=b"{}").status_code == 201
    assert recorder.calls["/payments"] == 1
    assert _records(workdir / "retrysafe.db") == before
    other = started["wait0"].url  # scoped by X-API-Key: Authorization alone is no scope
    assert is_problem(client.post(f"{other}/payments", headers=key()), 400, "scope-missing")
    assert recorder.calls["/payments"] == 1


def test_b8_anonymous_shared_lets_credential_less_callers_share_one_scope(
    started: dict[str, Proxy], recorder: Recorder, client: httpx.Client
) -> None:
    """With --anonymous shared, keyed requests without a credential share the anonymous scope
    (a retry replays); a caller with a credential keeps a scope of its own."""
    url = started["shared"].url
    headers = key()
    with httpx.Client(timeout=20) as anonymous:
        first = anonymous.post(f"{url}/payments", headers=headers, content=b"{}")
        again = anonymous.post(f"{url}/payments", headers=headers, content=b"{}")
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    mine = client.post(f"{url}/payments", headers=headers, content=b"{}")
    assert "idempotent-replayed" not in mine.headers
    assert recorder.calls["/payments"] == 2


def _records(path: Path) -> list[tuple[str, str, str]]:
    """Return the identities of the app's records in the SQLite store at `path`."""
    store = retrysafe.open_store(f"sqlite:///{path}")
    try:
        return sorted(
            (r.identity.namespace, r.identity.scope, r.identity.key)
            for r in store.list_records(limit=10_000)
            if r.identity.namespace != SECRET_IDENTITY.namespace
        )
    finally:
        store.close()
