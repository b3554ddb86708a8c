"""The Idempotency-Key header through the middleware on real servers: B1-B6."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from retrysafe._keys import KeyPolicy
from tests.http.conftest import Service, is_problem

Serve = Callable[..., Service]


def test_b1_quoted_key_is_accepted_and_replayed(serve: Serve) -> None:
    """A quoted sf-string key runs once and replays; the key is the unescaped content."""
    service = serve()
    first = service.post("/payments", '"a\\"b"', json={"amount": 1})
    second = service.post("/payments", '"a\\"b"', json={"amount": 1})
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1
    assert [r.identity.key for r in service.records()] == ['a"b']


def test_b2_bare_key_is_the_same_key_as_its_quoted_form(serve: Serve) -> None:
    """In lenient mode a bare value is accepted and replays the quoted form's outcome."""
    service = serve()
    key = str(uuid.uuid4())
    first = service.post("/payments", f'"{key}"', json={"amount": 1})
    second = service.post("/payments", key, json={"amount": 1})
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert service.recorder.calls["/payments"] == 1


def test_b2_strict_mode_refuses_a_bare_key(serve: Serve) -> None:
    """Strict mode answers 400 problem+json to a bare key and runs nothing."""
    service = serve(key_policy=KeyPolicy(strict=True))
    response = service.post("/payments", "bare-key", json={"amount": 1})
    assert is_problem(response, 400, "invalid-key")
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []


MALFORMED = [
    pytest.param([b'"unterminated'], id="unterminated-quote"),
    pytest.param([b'"bad\\escape"'], id="bad-escape"),
    pytest.param([b'"caf\xc3\xa9"'], id="non-ascii"),
    pytest.param([b"caf\xc3\xa9"], id="non-ascii-bare"),
    pytest.param([b'"abc" trailing'], id="trailing-garbage"),
    pytest.param([b'"a"', b'"b"'], id="two-header-lines"),
    pytest.param([b"a", b"b"], id="two-bare-header-lines"),  # WSGI servers join them: "a,b"
    pytest.param([b"a,b"], id="bare-with-comma"),
    pytest.param([b'""'], id="empty-quoted"),
    pytest.param([b""], id="empty-bare"),
    pytest.param([b"a b"], id="bare-with-space"),
]


@pytest.mark.parametrize("values", MALFORMED)
def test_b3_malformed_key_gets_400_and_touches_no_storage(
    serve: Serve, values: list[bytes]
) -> None:
    """A malformed Idempotency-Key gets 400 problem+json; no handler call, no record."""
    service = serve()
    headers = [(b"idempotency-key", value) for value in values]
    response = service.client.post("/payments", headers=headers, json={"amount": 1})
    assert is_problem(response, 400, "invalid-key")
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []


def test_b3_a_quoted_key_may_hold_a_comma(serve: Serve) -> None:
    """A comma is refused only in a bare value (two lines joined look alike); quoted, it is
    one key's, and the key replays."""
    service = serve()
    first = service.post("/payments", '"a,b"', json={"amount": 1})
    second = service.post("/payments", '"a,b"', json={"amount": 1})
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert [r.identity.key for r in service.records()] == ["a,b"]


def test_b3_parameters_after_the_string_are_ignored(serve: Serve) -> None:
    """Structured-field parameters after a valid string are ignored: same key."""
    service = serve()
    service.post("/payments", '"k1";p=1', json={"amount": 1})
    second = service.post("/payments", '"k1"', json={"amount": 1})
    assert second.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1


def test_b4_key_length_limit(serve: Serve) -> None:
    """A key of 255 characters is accepted; 256 gets 400 and nothing runs."""
    service = serve()
    assert service.post("/payments", "k" * 255, json={"amount": 1}).status_code == 201
    response = service.post("/payments", "k" * 256, json={"amount": 1})
    assert is_problem(response, 400, "invalid-key")
    assert service.recorder.calls["/payments"] == 1


def test_b4_uuid_only_and_minimum_length_policies(serve: Serve) -> None:
    """The UUID-only and minimum-length policies answer 400 to keys that break them."""
    service = serve(key_policy=KeyPolicy(uuid_only=True, min_length=10))
    assert is_problem(service.post("/payments", "not-a-uuid", json={}), 400, "invalid-key")
    assert is_problem(service.post("/payments", "short", json={}), 400, "invalid-key")
    assert service.post("/payments", str(uuid.uuid4()), json={}).status_code == 201
    assert service.recorder.calls["/payments"] == 1


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "HEAD"])
def test_b5_uncovered_methods_ignore_the_header(serve: Serve, method: str) -> None:
    """On uncovered methods the header is ignored: no error, no storage, no replay header."""
    service = serve()
    for _ in range(2):
        response = service.client.request(
            method,
            "/payments",
            headers={"Idempotency-Key": '"bad', "Content-Type": "application/json"},
            content=b'{"a": 1}',
        )
        assert response.headers.get("content-type") != "application/problem+json"
        assert "idempotent-replayed" not in response.headers
    assert service.records() == []


def test_b5_patch_is_covered_by_default(serve: Serve) -> None:
    """PATCH with a key is tracked and replayed like POST."""
    service = serve()
    first = service.client.patch("/payments", headers={"Idempotency-Key": "p"}, json={"a": 1})
    second = service.client.patch("/payments", headers={"Idempotency-Key": "p"}, json={"a": 1})
    assert first.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1


def test_b5_covered_methods_are_configurable(serve: Serve) -> None:
    """With methods={"PUT"}, PUT is tracked and POST passes through untracked."""
    service = serve(methods={"PUT"})
    service.client.put("/payments", headers={"Idempotency-Key": "k"}, json={"a": 1})
    second = service.client.put("/payments", headers={"Idempotency-Key": "k"}, json={"a": 1})
    assert second.headers["idempotent-replayed"] == "true"
    service.post("/payments", "k2", json={"a": 1})
    service.post("/payments", "k2", json={"a": 1})
    assert service.recorder.calls["/payments"] == 3
    assert len(service.records()) == 1


def test_b6_required_key_missing_gets_400(serve: Serve) -> None:
    """A required endpoint answers 400 problem+json without a key; no handler, no record."""
    service = serve(required=True)
    response = service.post("/payments", json={"amount": 1})
    assert is_problem(response, 400, "key-required")
    assert service.recorder.calls["/payments"] == 0
    assert service.records() == []


def test_b6_without_required_a_keyless_request_runs_untracked(serve: Serve) -> None:
    """Without required, requests without a key run every time and store nothing."""
    service = serve()
    for _ in range(2):
        response = service.post("/payments", json={"amount": 1})
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert service.recorder.calls["/payments"] == 2
    assert service.records() == []
