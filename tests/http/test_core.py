"""The sans-I/O HTTP core: settings, routes, the outcome codec, the capture, non-HTTP scopes."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from typing import Any, get_type_hints

import anyio
import pytest
from starlette.authentication import SimpleUser, UnauthenticatedUser

from retrysafe import ConfigurationError, Identity, Record, State
from retrysafe._errors import OutcomeError
from retrysafe._http import (
    ANONYMOUS_SCOPE,
    PROBLEMS,
    SECRET_ENV,
    RequestView,
    ResponseCapture,
    Router,
    RouteSettings,
    Scoper,
    Settings,
    SettingsOptions,
    decode_outcome,
    encode_omitted,
    encode_outcome,
    outcome_to_store,
    problem,
    problem_type,
    replay_response,
)
from retrysafe._http.scope import ScopeError, normalise_credential, principal_of
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores.memory import AsyncMemoryStore


def _request(**changes: Any) -> RequestView:
    base = RequestView("POST", "/payments", b"", ((b"authorization", b"Bearer t"),), {})
    return dataclasses.replace(base, **changes)


def test_settings_options_match_the_settings_fields() -> None:
    """The keyword options TypedDict names exactly the init fields of Settings."""
    fields = {f.name for f in dataclasses.fields(Settings) if f.init}
    assert set(get_type_hints(SettingsOptions)) == fields


def test_route_settings_fields_are_settings_fields() -> None:
    """Every RouteSettings field overrides a Settings field of the same name."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert {f.name for f in dataclasses.fields(RouteSettings)} <= fields


def test_settings_defaults_follow_the_spec() -> None:
    """The defaults are SPEC.md's: POST and PATCH, 24 h, 30 s, 10 s, 422, 1 MiB."""
    settings = Settings()
    assert settings.methods == frozenset({"POST", "PATCH"})
    assert (settings.retention, settings.lease, settings.wait) == (86400, 30, 10)
    assert settings.mismatch_status == 422
    assert settings.max_body_size == settings.max_response_size == 1024 * 1024
    assert settings.replay_header == "Idempotent-Replayed"
    assert not settings.required
    assert not settings.fail_open


@pytest.mark.parametrize(
    "changes",
    [
        {"mismatch_status": 418},
        {"lease": 0},
        {"retention": -1},
        {"wait": -1},
        {"lease": float("nan")},
        {"retention": float("inf")},
        {"wait": float("inf")},
        {"max_body_size": -1},
        {"max_in_flight_per_scope": 0},
        {"fingerprint": "xml"},
        {"outcomes": "some"},
        {"stored_headers": {"Content-Type", "Date"}},
        {"stored_headers": {"transfer-encoding"}},
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any]) -> None:
    """Invalid settings raise ConfigurationError when built."""
    with pytest.raises(ConfigurationError):
        Settings(**changes)


def test_collections_are_normalised() -> None:
    """Methods become upper case and headers lower case, as frozensets."""
    settings = Settings(methods=["post", "put"], stored_headers=["ETag"])
    assert settings.methods == frozenset({"POST", "PUT"})
    assert settings.stored_headers == frozenset({"etag"})
    assert RouteSettings(methods=["patch"]).methods == frozenset({"PATCH"})
    assert hash(RouteSettings(methods=["patch"])) == hash(RouteSettings(methods={"PATCH"}))


def test_with_route_overrides_only_given_fields() -> None:
    """A route's None fields keep the middleware's values."""
    settings = Settings(retention=100, wait=3)
    routed = settings.with_route(RouteSettings(retention=5, required=True))
    assert (routed.retention, routed.wait, routed.required) == (5, 3, True)
    assert settings.with_route(RouteSettings()) is settings


def test_router_patterns_first_match_wins() -> None:
    """`*` stays within a segment, `**` crosses them, None is not covered, first match wins."""
    base = Settings()
    router = Router(
        base,
        {
            "/payments": RouteSettings(required=True),
            "/users/*": RouteSettings(retention=5),
            "/users/*/avatar": RouteSettings(retention=6),
            "/internal/**": None,
            "/files/*.csv": RouteSettings(wait=1),
        },
    )
    payments = router.for_path("/payments")
    assert payments is not None
    assert payments.required
    user = router.for_path("/users/42")
    assert user is not None
    assert user.retention == 5
    avatar = router.for_path("/users/42/avatar")
    assert avatar is not None
    assert avatar.retention == 6
    assert router.for_path("/internal/a/b/c") is None
    csv = router.for_path("/files/report.csv")
    assert csv is not None
    assert csv.wait == 1
    assert router.for_path("/payments/1") is base
    assert router.for_path("/users/42/other") is base
    assert router.may_require


def test_router_methods_are_the_union_of_routes() -> None:
    """Methods a route adds are seen by the fast method check."""
    router = Router(Settings(), {"/things": RouteSettings(methods={"PUT"})})
    assert router.methods == frozenset({"POST", "PATCH", "PUT"})
    assert not router.may_require


def test_router_refuses_patterns_and_a_hook_together() -> None:
    """routes= and a route_settings hook exclude each other; patterns start with '/'."""
    with pytest.raises(ConfigurationError):
        Router(Settings(), {"/a": None}, hooked=True)
    with pytest.raises(ConfigurationError):
        Router(Settings(), {"payments": None})


def test_router_caches_hook_answers() -> None:
    """Equal route settings from a hook resolve to one cached Settings object."""
    router = Router(Settings(), hooked=True)
    first = router.for_route(RouteSettings(required=True))
    assert first is router.for_route(RouteSettings(required=True))
    assert router.for_route(None) is None


def test_request_view_header_and_default_scope() -> None:
    """Header lookup is case-insensitive and joins lines; the scope is a keyed hash of the
    principal, else of the normalised credential, else none (or the shared anonymous one)."""
    request = _request(headers=((b"x-key", b"a"), (b"x-key", b"b")))
    assert request.header("X-Key") == b"a, b"
    assert request.header("missing") is None
    secret = b"0123456789abcdef"
    scoper, settings = Scoper(secret), Settings()

    def keyed(message: bytes) -> str:
        return hmac.new(secret, message, hashlib.sha256).hexdigest()

    credential = scoper.scope_of(settings, _request())
    assert credential == "c:" + keyed(b"credential\0authorization\0bearer t")
    assert hashlib.sha256(b"Bearer t").hexdigest() not in str(credential)
    principal = scoper.scope_of(settings, _request(principal="app.User:7"))
    assert principal == "p:" + keyed(b"principal\0app.User:7")  # the principal wins
    assert scoper.scope_of(settings, _request(headers=())) is None
    shared = Settings(anonymous="shared")
    assert scoper.scope_of(shared, _request(headers=())) == ANONYMOUS_SCOPE
    assert Scoper(b"another secret!!").scope_of(settings, _request()) != credential


def test_b8_credentials_are_normalised_and_principals_named() -> None:
    """Scheme case and white space do not change a credential; users name a principal by
    class and id, and unauthenticated or nameless users name none."""
    assert normalise_credential(b"Bearer  x") == normalise_credential(b"bEARER x") == b"bearer x"
    assert normalise_credential(b"Bearer x") != normalise_credential(b"Bearer X")
    assert normalise_credential(b" token-only ") == b"token-only"
    simple = principal_of(SimpleUser("ann"))
    assert simple is not None
    assert simple.startswith("starlette.authentication.SimpleUser:")
    assert simple.endswith("=ann")  # its identity (or username, in older Starlette)
    assert principal_of(UnauthenticatedUser()) is None
    assert principal_of(None) is None
    assert principal_of("") is None
    assert principal_of("ann") == "builtins.str:ann"
    assert principal_of({"id": 7}) == "builtins.dict:7"
    assert principal_of({"id": 0}) == "builtins.dict:0"  # user 0 is a user
    assert principal_of({"id": "", "username": "ann"}) == "builtins.dict:ann"
    assert principal_of({"id": None}) is None
    with pytest.raises(ScopeError, match="stable identifier"):  # nameless: refused (B8)
        principal_of(object())


def test_b8_the_scope_secret_comes_from_settings_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """settings.scope_secret wins over RETRYSAFE_SCOPE_SECRET; neither: kept in the store;
    a secret shorter than 16 bytes is refused."""
    monkeypatch.delenv(SECRET_ENV, raising=False)
    assert Scoper.configured_secret(Settings()) is None
    monkeypatch.setenv(SECRET_ENV, "from the environment")
    assert Scoper.configured_secret(Settings()) == b"from the environment"
    assert Scoper.configured_secret(Settings(scope_secret="from settings")) == b"from settings"
    with pytest.raises(ValueError, match="16 bytes"):
        Scoper(b"short")


def test_fingerprint_covers_method_path_query_and_body() -> None:
    """Changing any of method, path, query or body changes the fingerprint."""
    settings = Settings()
    base = settings.fingerprint_of(_request(), b"{}")
    assert settings.fingerprint_of(_request(method="PATCH"), b"{}") != base
    assert settings.fingerprint_of(_request(path="/other"), b"{}") != base
    assert settings.fingerprint_of(_request(query_string=b"a=1"), b"{}") != base
    assert settings.fingerprint_of(_request(), b"{ }") != base
    canonical = Settings(fingerprint="json")
    assert canonical.fingerprint_of(_request(), b'{"a":1,"b":2}') == canonical.fingerprint_of(
        _request(), b'{ "b": 2, "a": 1 }'
    )


def test_outcome_round_trip_keeps_only_allowed_headers() -> None:
    """The codec stores status, allow-listed headers (lower case) and the body exactly."""
    settings = Settings()
    headers = [
        (b"Content-Type", b"application/json"),
        (b"Set-Cookie", b"s=1"),
        (b"Location", b"/x"),
        (b"Date", b"today"),
    ]
    body = bytes(range(256)) * 3
    stored = decode_outcome(encode_outcome(201, headers, body, settings))
    assert stored.status == 201
    assert stored.headers == ((b"content-type", b"application/json"), (b"location", b"/x"))
    assert stored.body == body
    assert not stored.body_omitted
    omitted = decode_outcome(encode_omitted(201, headers, settings))
    assert omitted.body_omitted
    assert omitted.body == b""


@pytest.mark.parametrize(
    "data", [b"", b"RSH", b"XXXX\x00\xc8\x00\x00\x00", b"RSH1\x00\xc8\x00\x00\x05"]
)
def test_decode_refuses_foreign_or_truncated_outcomes(data: bytes) -> None:
    """Bytes that are not a stored HTTP outcome raise OutcomeError."""
    with pytest.raises(OutcomeError):
        decode_outcome(data)


def _done(outcome: bytes | None) -> Record:
    return Record(Identity("http", "s", "k"), "fp", State.DONE, "t", 0.0, 0.0, 1e12, outcome)


def test_replay_response_adds_length_and_the_replay_header() -> None:
    """A replay carries the stored headers, Content-Length and the replay header."""
    settings = Settings(replay_header="X-Replayed")
    outcome = encode_outcome(201, [(b"etag", b'"1"')], b"body", settings)
    response = replay_response(_done(outcome), settings)
    assert response.status == 201
    assert response.body == b"body"
    assert response.headers == (
        (b"etag", b'"1"'),
        (b"content-length", b"4"),
        (b"x-replayed", b"true"),
    )
    assert replay_response(_done(b"junk"), settings).status == 500
    assert replay_response(_done(None), settings).status == 500


def test_capture_overflows_past_the_limit() -> None:
    """The capture buffers up to its limit, then reports the overflow once and stops buffering."""
    capture = ResponseCapture(limit=5)
    capture.start(201, [])
    assert not capture.add(b"abc")
    assert capture.add(b"def")
    assert capture.take() == b"abcdef"
    assert not capture.add(b"ghi")
    assert capture.body() == b""
    assert capture.size == 9
    capture.complete = True
    outcome = outcome_to_store(capture, Settings())
    assert outcome is not None
    assert decode_outcome(outcome).body_omitted


def test_outcome_policy_decides_store_or_release() -> None:
    """Definitive statuses are stored; 5xx, 408, 429, 307, 308 and incomplete responses are
    released."""
    settings = Settings()
    statuses = [(201, True), (303, True), (404, True), (408, False), (429, False)]
    for status, stored in [*statuses, (307, False), (308, False), (502, False)]:
        capture = ResponseCapture(limit=10)
        capture.start(status, [])
        capture.complete = True
        assert (outcome_to_store(capture, settings) is not None) is stored, status
    incomplete = ResponseCapture(limit=10)
    incomplete.start(201, [])
    assert outcome_to_store(incomplete, settings) is None
    failed = ResponseCapture(limit=10)
    failed.start(500, [])
    failed.complete = True
    assert outcome_to_store(failed, Settings(outcomes="all")) is not None


def test_every_problem_has_a_status_and_title() -> None:
    """Each problem renders as problem+json with its default status."""
    settings = Settings(problem_base_url="https://x/#")
    for slug, (status, title) in PROBLEMS.items():
        response = problem(slug, settings, "detail")
        assert response.status == status
        assert dict(response.headers)[b"content-type"] == b"application/problem+json"
        assert title.encode() in response.body
        assert f'"type":"{problem_type(slug, settings)}"'.encode() in response.body


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
def test_non_http_scopes_pass_straight_through(kind: str) -> None:
    """Lifespan and websocket scopes reach the app untouched, store unused."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": kind, "headers": [(b"idempotency-key", b'"bad')]}
    store = AsyncMemoryStore()
    anyio.run(IdempotencyMiddleware(app, store=store, required=True), scope, None, None)
    assert seen == [scope]
    assert anyio.run(store.list_records) == []
