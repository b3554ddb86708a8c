"""First execution, scope and replay on real servers: B7-B12 and B21."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from retrysafe import ConfigurationError, ManualClock
from retrysafe._fingerprint import canonical_json
from retrysafe._http import RequestView
from retrysafe.asgi import IdempotencyMiddleware, RouteSettings
from retrysafe.stores.memory import AsyncMemoryStore
from tests.http.conftest import Service, is_problem, parallel

Serve = Callable[..., Service]


def test_b7_parallel_identical_requests_run_the_handler_once(serve: Serve) -> None:
    """50 parallel identical requests over HTTP: the handler runs exactly once."""
    service = serve(wait=10)
    responses = parallel(50, lambda _: service.post("/payments", "same", json={"amount": 5}))
    assert service.recorder.calls["/payments"] == 1
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert len(service.records()) == 1


def test_b8_same_key_in_two_scopes_runs_twice_and_never_crosses(serve: Serve) -> None:
    """The same key from two Authorization values runs twice; each scope replays its own."""
    service = serve()
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    first_alice = service.post("/payments", "k", json={"who": "alice"}, headers=alice)
    first_bob = service.post("/payments", "k", json={"who": "bob"}, headers=bob)
    assert first_alice.status_code == first_bob.status_code == 201
    assert service.recorder.calls["/payments"] == 2
    again_alice = service.post("/payments", "k", json={"who": "alice"}, headers=alice)
    again_bob = service.post("/payments", "k", json={"who": "bob"}, headers=bob)
    assert again_alice.content == first_alice.content
    assert again_bob.content == first_bob.content
    assert again_alice.json()["body"] == {"who": "alice"}
    assert len({r.identity.scope for r in service.records()}) == 2


def test_b8_scope_from_a_configured_api_key_header(serve: Serve) -> None:
    """With scope_header="X-API-Key", that header, not Authorization, separates scopes."""
    service = serve(scope_header="X-API-Key")
    service.post("/payments", "k", json={}, headers={"X-API-Key": "one", "Authorization": "x"})
    other = service.post(
        "/payments", "k", json={}, headers={"X-API-Key": "two", "Authorization": "x"}
    )
    assert "idempotent-replayed" not in other.headers
    same = service.post(
        "/payments", "k", json={}, headers={"X-API-Key": "one", "Authorization": "y"}
    )
    assert same.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 2


def test_b8_scope_function_of_the_request(serve: Serve) -> None:
    """A scope function sees the request (method, path, headers) and names the scope."""

    def tenant(request: RequestView) -> str:
        assert request.method == "POST"
        assert request.path == "/payments"
        return (request.header("X-Tenant") or b"none").decode()

    service = serve(scope_function=tenant)
    service.post("/payments", "k", json={}, headers={"X-Tenant": "acme"})
    service.post("/payments", "k", json={}, headers={"X-Tenant": "globex"})
    assert service.recorder.calls["/payments"] == 2
    assert sorted(r.identity.scope for r in service.records()) == ["acme", "globex"]


def test_b8_with_anonymous_shared_requests_without_credentials_share_one_scope(
    serve: Serve,
) -> None:
    """With anonymous="shared" chosen, requests without a credential share one scope."""
    service = serve(anonymous="shared")
    service.post("/payments", "k", json={}, anonymous=True)
    again = service.post("/payments", "k", json={}, anonymous=True)
    assert again.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1
    assert [r.identity.scope for r in service.records()] == ["anonymous"]


VALID = "Bearer valid"  # the one credential the auth layer accepts


def _reject_unauthorized_asgi(app: Any) -> Any:
    async def auth(scope: Any, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers", []))
        if scope["type"] == "http" and headers.get(b"authorization") != VALID.encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"no"})
            return
        await app(scope, receive, send)

    return auth


def _reject_unauthorized_wsgi(app: Any) -> Any:
    def auth(environ: Any, start_response: Any) -> Any:
        if environ.get("HTTP_AUTHORIZATION") != VALID:
            start_response("401 Unauthorized", [])
            return [b"no"]
        return app(environ, start_response)

    return auth


def test_b9_request_rejected_before_the_layer_leaves_no_record(serve: Serve, face: str) -> None:
    """An auth layer in front rejects a request with a key: no record, no handler call."""
    wrap = _reject_unauthorized_wsgi if face == "flask" else _reject_unauthorized_asgi
    service = serve(wrap=wrap)
    assert service.post("/payments", "k", json={}).status_code == 401  # a bad token
    assert service.post("/payments", "k", json={}, anonymous=True).status_code == 401
    assert service.records() == []
    authorized = service.post("/payments", "k", json={}, headers={"Authorization": VALID})
    assert authorized.status_code == 201
    assert service.recorder.calls["/payments"] == 1


def test_b10_replay_is_byte_for_byte_with_the_replay_header(serve: Serve) -> None:
    """A replay has the stored status, headers and body byte for byte, plus the header."""
    service = serve()
    first = service.post("/payments", "k", json={"amount": 10})
    second = service.post("/payments", "k", json={"amount": 10})
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    for name in ("content-type", "location", "etag"):
        assert second.headers[name] == first.headers[name]
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert service.recorder.calls["/payments"] == 1


def test_b10_a_stored_4xx_stays_that_4xx(serve: Serve) -> None:
    """A 404 outcome is stored and replayed as the same 404."""
    service = serve()
    first = service.post("/status/404", "k")
    second = service.post("/status/404", "k")
    assert first.status_code == second.status_code == 404
    assert second.content == first.content == b"status 404"
    assert second.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/status"] == 1


def test_b10_replay_header_name_is_configurable(serve: Serve) -> None:
    """With replay_header="X-Replayed" the replay carries that header instead."""
    service = serve(replay_header="X-Replayed")
    service.post("/payments", "k", json={})
    second = service.post("/payments", "k", json={})
    assert second.headers["x-replayed"] == "true"
    assert "idempotent-replayed" not in second.headers


def test_b11_only_allow_listed_headers_are_replayed(serve: Serve) -> None:
    """Location, ETag, Content-Type replay; Set-Cookie and X-Request-Id never do."""
    service = serve()
    first = service.post("/payments", "k", json={})
    assert "set-cookie" in first.headers  # the first response is the app's own
    second = service.post("/payments", "k", json={})
    assert "set-cookie" not in second.headers
    assert "x-request-id" not in second.headers
    assert second.headers["location"] == "/payments/1"


def test_b11_set_cookie_and_date_from_the_app_are_never_replayed(serve: Serve) -> None:
    """The app's Set-Cookie and Date are not stored; a replay has no cookie, no app Date."""
    service = serve()
    service.post("/cookie", "k")
    second = service.post("/cookie", "k")
    assert second.headers["idempotent-replayed"] == "true"
    assert "set-cookie" not in second.headers
    assert second.headers.get("date") != "Mon, 01 Jan 2024"
    (record,) = service.records()
    assert record.outcome is not None
    assert b"a=b" not in record.outcome
    assert b"Mon, 01 Jan 2024" not in record.outcome


def test_b11_the_allow_list_is_configurable(serve: Serve) -> None:
    """An allow-list with X-Request-Id replays it; Set-Cookie can never be allowed."""
    service = serve(stored_headers={"Content-Type", "X-Request-Id"})
    service.post("/payments", "k", json={})
    second = service.post("/payments", "k", json={})
    assert second.headers["x-request-id"] == "req-1"
    assert "location" not in second.headers
    with pytest.raises(ConfigurationError, match="set-cookie"):
        IdempotencyMiddleware(
            _noop, store=AsyncMemoryStore(), stored_headers={"Content-Type", "Set-Cookie"}
        )


async def _noop(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that does nothing."""


def test_b12_a_different_body_query_or_path_is_a_mismatch(serve: Serve) -> None:
    """The fingerprint covers the body, the query string and the path."""
    service = serve()
    service.post("/payments", "k", json={"amount": 1})
    assert is_problem(service.post("/payments", "k", json={"amount": 2}), 422, "key-mismatch")
    assert is_problem(service.post("/payments?x=1", "k", json={"amount": 1}), 422, "key-mismatch")
    assert is_problem(service.post("/status/201", "k"), 422, "key-mismatch")
    assert service.recorder.calls["/payments"] == 1
    assert service.recorder.calls["/status"] == 0


def test_b12_raw_fingerprint_sees_json_key_order(serve: Serve) -> None:
    """By default the raw bytes count: reordered JSON keys are a different request."""
    service = serve()
    json_headers = {"Content-Type": "application/json"}
    service.post("/payments", "k", content=b'{"a": 1, "b": 2}', headers=json_headers)
    reordered = service.post("/payments", "k", content=b'{"b":2,"a":1}', headers=json_headers)
    assert is_problem(reordered, 422, "key-mismatch")


def test_b12_json_fingerprint_ignores_key_order_and_whitespace(serve: Serve) -> None:
    """In JSON-canonical mode reordered keys and whitespace replay the same outcome."""
    service = serve(fingerprint="json")
    json_headers = {"Content-Type": "application/json"}
    first = service.post("/payments", "k", content=b'{"a": 1, "b": 2}', headers=json_headers)
    second = service.post("/payments", "k", content=b'{"b":2,"a":1}', headers=json_headers)
    assert second.headers["idempotent-replayed"] == "true"
    assert second.content == first.content
    assert service.recorder.calls["/payments"] == 1


DEEP = 100_000
"""A nesting depth Python's JSON parser refuses on every version (3.13 parses 5,000)."""


@pytest.mark.parametrize(
    "body",
    [b'{"note": "\\ud800"}', b"[" * DEEP + b"]" * DEEP],
    ids=["lone-surrogate", "nested-too-deep"],
)
def test_b12_json_fingerprint_takes_json_it_cannot_rewrite_as_raw_bytes(
    serve: Serve, body: bytes
) -> None:
    """In JSON-canonical mode a body that parses into what JSON cannot write back (an escaped
    lone surrogate) or nests too deep to parse is fingerprinted by its bytes: it runs once and
    its retry replays (both were a 500 from the middleware); other bytes are a mismatch."""
    service = serve(fingerprint="json")
    json_headers = {"Content-Type": "application/json"}
    first = service.post("/status/201", "k", content=body, headers=json_headers)
    second = service.post("/status/201", "k", content=body, headers=json_headers)
    assert first.status_code == 201, first.text
    assert second.headers["idempotent-replayed"] == "true"
    assert is_problem(
        service.post("/status/201", "k", content=body + b" ", headers=json_headers),
        422,
        "key-mismatch",
    )
    assert service.recorder.calls["/status"] == 1  # an endpoint that never reads the body


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Not the other way round for one release: a key answered for 0.1 is in the form 0.1.0
        # gave both bodies, so 0.10000000000000001 adopts it (B39, tests/upgrade/).
        (b'{"amount": 0.10000000000000001}', b'{"amount": 0.1}'),
        (b'{"amount": 12345678901234567.0}', b'{"amount": 12345678901234568.0}'),
        (b'{"amount": 1e400}', b'{"amount": 9e999}'),
        (b'{"amount": NaN}', b'{"amount": Infinity}'),
    ],
    ids=["past-17-digits", "past-2-to-the-53", "past-the-largest-float", "not-json-numbers"],
)
def test_b13_json_fingerprint_tells_apart_numbers_a_float_reads_alike(
    serve: Serve, first: bytes, second: bytes
) -> None:
    """In JSON-canonical mode two amounts that one float would hold alike are two requests: an
    app that parses numbers as decimals charges two amounts, so the second is a mismatch, not
    the first's replay. Such a body is fingerprinted by its bytes, and its retry replays."""
    service = serve(fingerprint="json")
    json_headers = {"Content-Type": "application/json"}
    assert service.post("/status/201", "k", content=first, headers=json_headers).status_code == 201
    again = service.post("/status/201", "k", content=first, headers=json_headers)
    assert again.headers["idempotent-replayed"] == "true"
    assert is_problem(
        service.post("/status/201", "k", content=second, headers=json_headers),
        422,
        "key-mismatch",
    )
    assert service.recorder.calls["/status"] == 1


def test_b39_json_fingerprints_of_exact_numbers_are_as_before() -> None:
    """Bodies whose numbers a float holds exactly are canonicalised as the previous release
    did (a retry straddling the upgrade still matches): `1.00` and `1.0` alike, sorted keys."""
    assert canonical_json(b'{"b": 1.00, "a": [0.1, 19.99, -0.0, 1e3, 7]}') == (
        b'{"a":[0.1,19.99,-0.0,1000.0,7],"b":1.0}'
    )


def test_b21_after_retention_the_same_key_is_a_new_request(serve: Serve) -> None:
    """Past its retention the record is gone on read: the key runs again."""
    clock = ManualClock()
    service = serve(clock=clock, retention=60)
    service.post("/payments", "k", json={})
    clock.advance(59)
    assert service.post("/payments", "k", json={}).headers["idempotent-replayed"] == "true"
    clock.advance(2)
    again = service.post("/payments", "k", json={})
    assert "idempotent-replayed" not in again.headers
    assert again.json()["n"] == 2


def test_b21_retention_per_route(serve: Serve) -> None:
    """A route's retention overrides the default for that route only."""
    clock = ManualClock()
    service = serve(clock=clock, retention=3600, routes={"/status/*": RouteSettings(retention=10)})
    service.post("/payments", "k1", json={})
    service.post("/status/201", "k2")
    clock.advance(11)
    assert service.post("/payments", "k1", json={}).headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in service.post("/status/201", "k2").headers


def test_routes_patterns_required_and_uncovered(serve: Serve) -> None:
    """Route patterns: first match wins; a required route needs a key; None is not covered."""
    service = serve(
        routes={
            "/payments": RouteSettings(required=True),
            "/status/**": None,
        }
    )
    assert is_problem(service.post("/payments", json={}), 400, "key-required")
    service.post("/status/201", "k")
    assert "idempotent-replayed" not in service.post("/status/201", "k").headers
    assert service.recorder.calls["/status"] == 2
    service.post("/cookie", "k")
    assert service.post("/cookie", "k").headers["idempotent-replayed"] == "true"


def test_route_settings_hook_decides_per_request(serve: Serve, face: str) -> None:
    """A route_settings hook of the scope or environ supplies settings, or None."""

    def hook(request: Any) -> RouteSettings | None:
        path = request["PATH_INFO"] if face == "flask" else request["path"]
        if path == "/cookie":
            return None
        return RouteSettings(required=path == "/payments")

    service = serve(route_settings=hook)
    assert is_problem(service.post("/payments", json={}), 400, "key-required")
    service.post("/cookie", "k")
    assert "idempotent-replayed" not in service.post("/cookie", "k").headers
    service.post("/status/201", "k")
    assert service.post("/status/201", "k").headers["idempotent-replayed"] == "true"


def test_client_sees_replays_through_httpx(serve: Serve) -> None:
    """A plain httpx client can tell a replay by its header (smoke test of the wire)."""
    service = serve()
    with httpx.Client(base_url=service.url, headers={"Authorization": "Bearer z"}) as client:
        client.post("/payments", headers={"Idempotency-Key": "z"}, json={})
        again = client.post("/payments", headers={"Idempotency-Key": "z"}, json={})
    assert again.headers["idempotent-replayed"] == "true"
