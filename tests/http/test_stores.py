"""The middleware on real stores (SQLite, PostgreSQL, Redis): B7, B15, B34, B35.

Each test runs on Starlette (uvicorn, async store) and Flask (waitress, sync store).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from retrysafe import open_store
from tests.http.conftest import Service, app_records, is_problem, parallel

Start = Callable[..., Service]
FACES = ["starlette", "flask"]


@pytest.mark.parametrize("face", FACES)
def test_b7_fifty_parallel_requests_run_once_on_a_real_store(
    face: str, start_service: Start, real_store_url: str
) -> None:
    """50 parallel identical requests through a real store: one execution, one outcome."""
    service = start_service(face, store_url=real_store_url, wait=10)
    responses = parallel(50, lambda _: service.post("/payments", "same", json={"amount": 7}))
    assert service.recorder.calls["/payments"] == 1
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1


@pytest.mark.parametrize("face", FACES)
def test_b7_two_app_instances_sharing_a_store_run_once(
    face: str, start_service: Start, real_store_url: str
) -> None:
    """Two servers (two middleware instances) on one store: a key runs once across both."""
    one = start_service(face, store_url=real_store_url, wait=10)
    two = start_service(face, store_url=real_store_url, wait=10, dedicated=True)
    responses = parallel(
        20, lambda i: (one if i % 2 else two).post("/payments", "k", json={"amount": 1})
    )
    assert one.recorder.calls["/payments"] + two.recorder.calls["/payments"] == 1
    assert len({r.content for r in responses}) == 1


KEYS = [
    pytest.param('"\'; DROP TABLE records; --"', "'; DROP TABLE records; --", id="sql"),
    pytest.param('"a\\"b\\\\c"', 'a"b\\c', id="escapes"),
    pytest.param("x'OR'1'='1;--", "x'OR'1'='1;--", id="bare-quote"),
    pytest.param('"*{}[]$%:\\\\"', "*{}[]$%:\\", id="glob-and-lua"),
]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(("header", "key"), KEYS)
def test_b34_hostile_keys_are_plain_data_in_real_stores(
    face: str, start_service: Start, real_store_url: str, header: str, key: str
) -> None:
    """Quotes, SQL and Lua/glob metacharacters in keys inject nothing: run once, replay."""
    service = start_service(face, store_url=real_store_url)
    first = service.post("/payments", header, json={"amount": 1})
    second = service.post("/payments", header, json={"amount": 1})
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1
    assert [r.identity.key for r in service.records()] == [key]
    other = service.post("/payments", '"plain"', json={"amount": 1})
    assert "idempotent-replayed" not in other.headers


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize(
    "value", [b'"nul\\0"', b"nul\x01", b'"caf\xc3\xa9"'], ids=["escaped-nul", "ctl", "utf8"]
)
def test_b34_control_and_non_ascii_bytes_never_reach_the_store(
    face: str, start_service: Start, real_store_url: str, value: bytes
) -> None:
    """Control and non-ASCII bytes in the key get 400; the store is not touched.

    (waitress refuses a control byte in a header itself, before the app.)
    """
    service = start_service(face, store_url=real_store_url)
    response = service.client.post(
        "/payments", headers=[(b"idempotency-key", value)], json={"amount": 1}
    )
    assert response.status_code == 400
    if response.headers.get("content-type") == "application/problem+json":
        assert is_problem(response, 400, "invalid-key")
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []


@pytest.mark.parametrize("face", FACES)
def test_b35_a_guessed_key_never_returns_another_scopes_response(
    face: str, start_service: Start, real_store_url: str
) -> None:
    """Mallory sends Alice's key and body: she gets a fresh execution, never Alice's data."""
    service = start_service(face, store_url=real_store_url)
    alice = service.post(
        "/payments", "k", json={"card": "alice"}, headers={"Authorization": "Bearer alice"}
    )
    mallory = service.post(
        "/payments", "k", json={"card": "alice"}, headers={"Authorization": "Bearer mallory"}
    )
    assert "idempotent-replayed" not in mallory.headers
    assert mallory.json()["n"] == 2
    assert alice.json()["n"] == 1
    scopes = {r.identity.scope for r in service.records()}
    assert len(scopes) == 2
    assert not any("alice" in scope or "mallory" in scope for scope in scopes)  # hashed


def test_b35_sync_and_async_faces_share_records_on_one_store(
    start_service: Start, real_store_url: str
) -> None:
    """An ASGI and a WSGI app on one store see the same keys: a key runs once across both."""
    asgi = start_service("starlette", store_url=real_store_url)
    wsgi = start_service("flask", store_url=real_store_url)
    first = asgi.post("/status/201", "k")
    second = wsgi.post("/status/201", "k")
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert wsgi.recorder.calls["/status"] == 0
    store = open_store(real_store_url)
    try:
        records = store.list_records()
        assert len(app_records(records)) == 1
        assert len(records) == 2  # and one scope secret, shared by both faces
    finally:
        store.close()
