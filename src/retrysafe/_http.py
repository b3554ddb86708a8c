"""The sans-I/O HTTP layer shared by the ASGI and WSGI middleware.

Values in, values out: settings and route matching, key and body checks, fingerprints and
scopes, problem+json responses (RFC 9457), the stored-outcome codec, the outcome policy and the
response capture. No sockets, no `await`, no clock; `retrysafe.asgi` and `retrysafe.wsgi` drive
these with their own I/O, and framework integrations can drive them too.

The flow of a covered request with a key (docs/http.md has the published policy):

    read_key  ->  check_content_length / body limit  ->  RequestView  ->  identity + fingerprint
      -> store.claim -> verdict(): execute | replay | mismatch | in flight (wait, then claim again)
      -> execute: run the app with the buffered body, capture the response (ResponseCapture),
         outcome_to_store(): complete(outcome) or release
"""

from __future__ import annotations

import dataclasses
import hashlib
import http
import json
import logging
import re
import struct
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, TypedDict

from retrysafe._engine import Decision, decide
from retrysafe._errors import ConfigurationError, InvalidKeyError, OutcomeError
from retrysafe._fingerprint import fingerprint_request
from retrysafe._keys import KeyPolicy, parse_key
from retrysafe._record import Claim, Identity, Record

__all__ = [
    "ANONYMOUS_SCOPE",
    "DEFAULT_PROBLEM_BASE_URL",
    "DEFAULT_STORED_HEADERS",
    "KEY_HEADER",
    "MIB",
    "NEVER_STORED_HEADERS",
    "PROBLEMS",
    "Header",
    "HttpCounters",
    "OutcomePolicy",
    "RequestView",
    "Response",
    "ResponseCapture",
    "RouteSettings",
    "Router",
    "ScopeLimiter",
    "Settings",
    "SettingsOptions",
    "StoredResponse",
    "check_content_length",
    "decode_outcome",
    "default_scope",
    "encode_omitted",
    "encode_outcome",
    "in_flight",
    "logger",
    "mismatch",
    "new_identity",
    "outcome_to_store",
    "problem",
    "read_key",
    "reason_phrase",
    "replay_response",
    "store_unavailable",
    "too_large",
    "too_many_in_flight",
    "verdict",
]

logger = logging.getLogger("retrysafe.http")

MIB: Final = 1024 * 1024
KEY_HEADER: Final = b"idempotency-key"
ANONYMOUS_SCOPE: Final = "anonymous"
DEFAULT_PROBLEM_BASE_URL: Final = "https://retrysafe.readthedocs.io/en/latest/http/#"
DEFAULT_STORED_HEADERS: Final = frozenset(
    {
        "cache-control",
        "content-location",
        "content-type",
        "etag",
        "last-modified",
        "link",
        "location",
    }
)
# Never stored, whatever the allow-list says: per-response, per-connection or per-client values.
NEVER_STORED_HEADERS: Final = frozenset(
    {
        "connection",
        "content-length",  # recomputed on replay
        "date",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "server",
        "set-cookie",
        "set-cookie2",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_MISMATCH_STATUSES: Final = frozenset({400, 409, 422})
# Seconds a client should wait before retrying, per problem.
_RETRY_IN_FLIGHT: Final = 1
_RETRY_STORE: Final = 2

OutcomePolicy: TypeAlias = Literal["definitive", "all"] | Callable[[int], bool]
"""Which response statuses are stored: "definitive" (the default), "all", or a predicate."""

Header: TypeAlias = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a scope function sees of a request, the same under ASGI and WSGI.

    Attributes:
        method: the request method, upper case.
        path: the decoded request path.
        query_string: the raw query string, without the `?`.
        headers: the request header lines, names in lower case.
        raw: the ASGI scope or the WSGI environ, for values set by outer layers (`user`).
    """

    method: str
    path: str
    query_string: bytes
    headers: Sequence[Header]
    raw: Mapping[str, object]

    def header(self, name: str) -> bytes | None:
        """Return the value of header `name` (lines joined by ", "), or None if absent."""
        wanted = name.lower().encode("latin-1")
        values = [value for key, value in self.headers if key == wanted]
        return b", ".join(values) if values else None


def default_scope(request: RequestView, header: str) -> str:
    """Return the SHA-256 of header `header` (a credential), or the anonymous scope (B8)."""
    value = request.header(header)
    if value is None:
        return ANONYMOUS_SCOPE
    return hashlib.sha256(value).hexdigest()


def _definitive(status: int) -> bool:
    # 2xx, 3xx (a 303 after a POST is a final answer too) and 4xx except 408 and 429.
    return 200 <= status < 500 and status not in (408, 429)


class SettingsOptions(TypedDict, total=False):
    """The keyword options of the middleware: the fields of `Settings` (see its docstring)."""

    methods: Collection[str]
    required: bool
    key_policy: KeyPolicy
    scope_header: str
    scope_function: Callable[[RequestView], str] | None
    fingerprint: Literal["raw", "json"]
    namespace: str
    retention: float
    lease: float
    wait: float
    mismatch_status: int
    replay_header: str
    stored_headers: Collection[str]
    outcomes: OutcomePolicy
    fail_open: bool
    max_body_size: int
    max_response_size: int
    max_in_flight_per_scope: int | None
    problem_base_url: str


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of the HTTP middleware, with the defaults of SPEC.md.

    Attributes:
        methods: the methods covered (B5); others pass through untouched.
        required: answer 400 to a covered request without a key (B6).
        key_policy: what a valid key looks like (B1-B4).
        scope_header: the credential header hashed into the scope (B8), such as `X-API-Key`.
        scope_function: a function of the request returning its scope; replaces `scope_header`.
        fingerprint: "raw" hashes the body bytes, "json" canonical JSON (B12).
        namespace: separates these records from other uses of the same store.
        retention: seconds a completed outcome is kept and replayed (B21).
        lease: seconds an in-flight claim holds before a retry may take it over (B16).
        wait: seconds a duplicate waits for the first request's outcome; 0 answers 409 (B15).
        mismatch_status: the status for a key reused with another request: 422, 400 or 409.
        replay_header: the header that marks a replayed response (B10).
        stored_headers: the response headers stored and replayed (B11), case-insensitive.
        outcomes: which statuses are stored (B18): "definitive", "all", or a predicate.
        fail_open: run the handler untracked when the store is unavailable (B20).
        max_body_size: the largest request body accepted on a tracked request (B22).
        max_response_size: the largest response body stored for replay (B22, B23).
        max_in_flight_per_scope: the most keys one scope may run at once here (B36); None: no cap.
        problem_base_url: the documentation URL that problem `type`s point into (B24, B25).
    """

    methods: Collection[str] = frozenset({"POST", "PATCH"})
    required: bool = False
    key_policy: KeyPolicy = KeyPolicy()  # noqa: RUF009 - a frozen value, safe to share
    scope_header: str = "Authorization"
    scope_function: Callable[[RequestView], str] | None = None
    fingerprint: Literal["raw", "json"] = "raw"
    namespace: str = "http"
    retention: float = 24 * 3600.0
    lease: float = 30.0
    wait: float = 10.0
    mismatch_status: int = 422
    replay_header: str = "Idempotent-Replayed"
    stored_headers: Collection[str] = DEFAULT_STORED_HEADERS
    outcomes: OutcomePolicy = "definitive"
    fail_open: bool = False
    max_body_size: int = MIB
    max_response_size: int = MIB
    max_in_flight_per_scope: int | None = None
    problem_base_url: str = DEFAULT_PROBLEM_BASE_URL
    # Derived once, for the request path.
    stored_header_names: frozenset[bytes] = field(init=False, repr=False, compare=False)
    replay_header_name: bytes = field(init=False, repr=False, compare=False)
    stores_status: Callable[[int], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Normalise collections to frozensets and refuse invalid values."""
        methods = frozenset(m.upper() for m in self.methods)
        stored = frozenset(h.lower() for h in self.stored_headers)
        forbidden = sorted(stored & NEVER_STORED_HEADERS)
        if forbidden:
            raise ConfigurationError(f"These headers are never stored or replayed: {forbidden}.")
        if self.mismatch_status not in _MISMATCH_STATUSES:
            raise ConfigurationError("mismatch_status must be 422, 400 or 409.")
        if self.fingerprint not in ("raw", "json"):
            raise ConfigurationError('fingerprint must be "raw" or "json".')
        if self.lease <= 0 or self.retention <= 0 or self.wait < 0:
            raise ConfigurationError("lease and retention must be positive, wait at least 0.")
        if self.max_body_size < 0 or self.max_response_size < 0:
            raise ConfigurationError("Size limits must not be negative.")
        if self.max_in_flight_per_scope is not None and self.max_in_flight_per_scope < 1:
            raise ConfigurationError("max_in_flight_per_scope must be at least 1, or None.")
        if self.outcomes == "definitive":
            stores_status: Callable[[int], bool] = _definitive
        elif self.outcomes == "all":
            stores_status = _store_all
        elif callable(self.outcomes):
            stores_status = self.outcomes
        else:
            raise ConfigurationError('outcomes must be "definitive", "all" or a function.')
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "stored_headers", stored)
        object.__setattr__(self, "stored_header_names", frozenset(h.encode() for h in stored))
        object.__setattr__(self, "replay_header_name", self.replay_header.lower().encode())
        object.__setattr__(self, "stores_status", stores_status)

    def scope_of(self, request: RequestView) -> str:
        """Return the scope of `request` (B8)."""
        if self.scope_function is not None:
            return self.scope_function(request)
        return default_scope(request, self.scope_header)

    def fingerprint_of(self, request: RequestView, body: bytes) -> str:
        """Return the fingerprint of `request` with `body`: method, path with query, body (B12)."""
        target = request.path
        if request.query_string:
            target += "?" + request.query_string.decode("utf-8", "surrogateescape")
        return fingerprint_request(
            request.method, target, body, json_canonical=self.fingerprint == "json"
        )

    def with_route(self, route: RouteSettings) -> Settings:
        """Return these settings with `route`'s overrides applied."""
        changes = {
            f.name: getattr(route, f.name)
            for f in dataclasses.fields(route)
            if getattr(route, f.name) is not None
        }
        return dataclasses.replace(self, **changes) if changes else self


def _store_all(status: int) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """Per-route overrides of `Settings`; None keeps the middleware's value.

    Given to the middleware as `routes={"/payments": RouteSettings(required=True)}`, or returned
    by a `route_settings` hook. The fields mean what the same `Settings` fields mean.
    """

    required: bool | None = None
    methods: Collection[str] | None = None
    retention: float | None = None
    lease: float | None = None
    wait: float | None = None
    namespace: str | None = None
    key_policy: KeyPolicy | None = None
    fingerprint: Literal["raw", "json"] | None = None
    outcomes: OutcomePolicy | None = None
    mismatch_status: int | None = None
    max_body_size: int | None = None
    max_response_size: int | None = None

    def __post_init__(self) -> None:
        """Keep route settings hashable (they key a cache)."""
        if self.methods is not None:
            object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))


def _compile_pattern(pattern: str) -> str:
    """Translate a path pattern: `*` is one segment or part of one, `**` any rest of the path."""
    if not pattern.startswith(("/", "*")):
        raise ConfigurationError(f"A route pattern starts with '/': {pattern!r}.")
    parts = re.split(r"(\*\*|\*)", pattern)
    return "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )


class Router:
    """Which settings apply to a request: path patterns, first match wins, or a hook's answer.

    Args:
        settings: the middleware settings, applied to paths no pattern matches.
        routes: path pattern to route settings, or None for "not covered".
        hooked: a `route_settings` hook decides instead of `routes`.
    """

    _CACHE_LIMIT: Final = 256

    def __init__(
        self,
        settings: Settings,
        routes: Mapping[str, RouteSettings | None] | None = None,
        *,
        hooked: bool = False,
    ) -> None:
        if hooked and routes:
            raise ConfigurationError("Give either routes or a route_settings hook, not both.")
        self.settings = settings
        self._cache: dict[RouteSettings, Settings] = {}
        self._targets: list[Settings | None] = []
        alternatives = []
        for index, (pattern, route) in enumerate((routes or {}).items()):
            alternatives.append(f"(?P<r{index}>{_compile_pattern(pattern)})")
            self._targets.append(None if route is None else settings.with_route(route))
        self._regex = re.compile("|".join(alternatives)) if alternatives else None
        known = [settings, *(s for s in self._targets if s is not None)]
        self.methods: frozenset[str] = frozenset().union(*(s.methods for s in known))
        """Every method any route covers: other methods pass through at once."""
        self.may_require: bool = hooked or any(s.required for s in known)
        """Whether a request without a key may need an answer (a route requires keys)."""

    def for_path(self, path: str) -> Settings | None:
        """Return the settings for `path`, or None if it is not covered."""
        if self._regex is None:
            return self.settings
        match = self._regex.fullmatch(path)
        if match is None or match.lastgroup is None:
            return self.settings
        return self._targets[int(match.lastgroup[1:])]

    def for_route(self, route: RouteSettings | None) -> Settings | None:
        """Return the settings for a hook's answer `route` (None: not covered)."""
        if route is None:
            return None
        settings = self._cache.get(route)
        if settings is None:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            settings = self._cache[route] = self.settings.with_route(route)
        return settings


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response to send: status, header lines, body."""

    status: int
    headers: tuple[Header, ...]
    body: bytes


PROBLEMS: Final[Mapping[str, tuple[int, str]]] = {
    "invalid-key": (400, "Invalid Idempotency-Key"),
    "key-required": (400, "Idempotency-Key is required"),
    "key-mismatch": (422, "Idempotency-Key is already used"),
    "request-in-flight": (409, "A request is outstanding for this Idempotency-Key"),
    "body-too-large": (413, "Request body too large"),
    "response-not-stored": (410, "The response for this Idempotency-Key was not stored"),
    "too-many-in-flight": (429, "Too many requests in flight"),
    "store-unavailable": (503, "Idempotency store unavailable"),
    "outcome-unreadable": (500, "Stored outcome unreadable"),
}
"""Every problem retrysafe answers with: docs anchor (the `type`) -> (default status, title)."""


def problem(
    slug: str,
    settings: Settings,
    detail: str,
    *,
    status: int | None = None,
    retry_after: int | None = None,
    replayed: bool = False,
) -> Response:
    """Return an RFC 9457 problem+json response of kind `slug` (a key of `PROBLEMS`, B24).

    The body holds only `type`, `title`, `status` and `detail`: never stored data of a request.
    """
    default_status, title = PROBLEMS[slug]
    status = status or default_status
    body = json.dumps(
        {
            "type": settings.problem_base_url + slug,
            "title": title,
            "status": status,
            "detail": detail,
        },
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    if replayed:
        headers.append((settings.replay_header_name, b"true"))
    return Response(status, tuple(headers), body)


def read_key(values: Sequence[bytes], settings: Settings) -> str | Response:
    """Return the key of the Idempotency-Key lines `values`, or the 400 problem (B1-B4, B6).

    `values` is empty when the header is absent: the key-required problem.
    """
    if not values:
        return problem(
            "key-required",
            settings,
            "This endpoint needs an Idempotency-Key header, for example "
            'Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324".',
        )
    try:
        return parse_key(values, settings.key_policy)
    except InvalidKeyError as error:
        return problem("invalid-key", settings, str(error))


def too_large(settings: Settings) -> Response:
    """Return the 413 problem for a request body above `max_body_size` (B22)."""
    return problem(
        "body-too-large",
        settings,
        f"Requests with an Idempotency-Key may carry at most {settings.max_body_size} bytes.",
    )


def check_content_length(value: bytes | None, settings: Settings) -> Response | None:
    """Return the 413 problem if a Content-Length announces too large a body, else None."""
    if value is not None and value.isdigit() and int(value) > settings.max_body_size:
        return too_large(settings)
    return None


def verdict(claim: Claim, fingerprint: str, now: float) -> Decision:
    """Return what to do after `claim`: the engine's decision on the record it returned."""
    if claim.acquired:
        return Decision.EXECUTE
    return decide(claim.record, fingerprint, now)


def mismatch(settings: Settings) -> Response:
    """Return the problem for a key reused with a different request (B13)."""
    return problem(
        "key-mismatch",
        settings,
        "This Idempotency-Key was already used with a different request (method, path, query "
        "or body). Use a new key for a new request.",
        status=settings.mismatch_status,
    )


def in_flight(settings: Settings) -> Response:
    """Return the 409 problem for a duplicate of a request still running (B14)."""
    return problem(
        "request-in-flight",
        settings,
        "The first request with this Idempotency-Key is still being processed. Retry later to "
        "get its response.",
        retry_after=_RETRY_IN_FLIGHT,
    )


def store_unavailable(settings: Settings) -> Response:
    """Return the 503 problem for a store that cannot be reached (B20)."""
    return problem(
        "store-unavailable",
        settings,
        "The idempotency store cannot be reached, so the request was not processed. Retry later.",
        retry_after=_RETRY_STORE,
    )


def too_many_in_flight(settings: Settings) -> Response:
    """Return the 429 problem for a scope over its in-flight cap (B36)."""
    return problem(
        "too-many-in-flight",
        settings,
        f"At most {settings.max_in_flight_per_scope} requests with Idempotency-Keys may be "
        "processed at once for one client. Retry later.",
        retry_after=_RETRY_IN_FLIGHT,
    )


# The outcome codec: a small binary frame, fast to decode on the replay path.
#   magic "RSH1" | status u16 | flags u8 | header count u16 | (name len u16, value len u32,
#   name, value)* | body
_MAGIC: Final = b"RSH1"
_HEAD: Final = struct.Struct(">4sHBH")
_LINE: Final = struct.Struct(">HI")
_BODY_OMITTED: Final = 1


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A decoded stored outcome.

    Attributes:
        status: the original status.
        headers: the allow-listed original headers.
        body: the original body (empty if omitted).
        body_omitted: the body was above the storable limit and was not stored (B22).
    """

    status: int
    headers: tuple[Header, ...]
    body: bytes
    body_omitted: bool = False


def encode_outcome(
    status: int, headers: Collection[Header], body: bytes, settings: Settings
) -> bytes:
    """Return the stored form of a response, keeping only allow-listed headers (B11)."""
    allowed = settings.stored_header_names
    kept = [(name.lower(), value) for name, value in headers if name.lower() in allowed]
    return _encode(status, kept, body, 0)


def encode_omitted(status: int, headers: Collection[Header], settings: Settings) -> bytes:
    """Return the stored form of a response whose body was too large to store (B22)."""
    allowed = settings.stored_header_names
    kept = [(name.lower(), value) for name, value in headers if name.lower() in allowed]
    return _encode(status, kept, b"", _BODY_OMITTED)


def _encode(status: int, headers: Sequence[Header], body: bytes, flags: int) -> bytes:
    parts = [_HEAD.pack(_MAGIC, status, flags, len(headers))]
    for name, value in headers:
        parts += (_LINE.pack(len(name), len(value)), name, value)
    parts.append(body)
    return b"".join(parts)


def decode_outcome(data: bytes) -> StoredResponse:
    """Return the response stored as `data`.

    Raises:
        OutcomeError: `data` is not an outcome written by `encode_outcome`.
    """
    try:
        magic, status, flags, count = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise OutcomeError("The stored outcome is not an HTTP response.")
        offset = _HEAD.size
        headers = []
        for _ in range(count):
            name_length, value_length = _LINE.unpack_from(data, offset)
            offset += _LINE.size
            name = data[offset : offset + name_length]
            offset += name_length
            value = data[offset : offset + value_length]
            offset += value_length
            headers.append((name, value))
    except struct.error:
        raise OutcomeError("The stored outcome is truncated.") from None
    if offset > len(data):
        raise OutcomeError("The stored outcome is truncated.")
    return StoredResponse(status, tuple(headers), data[offset:], bool(flags & _BODY_OMITTED))


def replay_response(record: Record, settings: Settings) -> Response:
    """Return the response replayed for a completed `record` (B10), or a problem.

    The stored status, headers and body byte for byte, plus the replay header. A response that
    was too large to store is answered with the 410 response-not-stored problem (B22).
    """
    if record.outcome is None:
        return problem("outcome-unreadable", settings, "The stored outcome is missing.")
    try:
        stored = decode_outcome(record.outcome)
    except OutcomeError:
        logger.exception("Cannot decode the stored outcome of %s", record.identity)
        return problem("outcome-unreadable", settings, "The stored outcome cannot be read.")
    if stored.body_omitted:
        return problem(
            "response-not-stored",
            settings,
            f"The request with this Idempotency-Key was processed (status {stored.status}), "
            "but its response was too large to store for replay. It will not run again.",
            replayed=True,
        )
    headers = (
        *stored.headers,
        (b"content-length", str(len(stored.body)).encode()),
        (settings.replay_header_name, b"true"),
    )
    return Response(stored.status, headers, stored.body)


def outcome_to_store(capture: ResponseCapture, settings: Settings) -> bytes | None:
    """Return the outcome to `complete` for a captured response, or None to `release` (B18).

    A response above the storable limit that the policy would store becomes an "omitted body"
    outcome: the effect happened, so a retry must not run it again (B22, B23).
    """
    if capture.status is None or not capture.complete:
        return None
    if not settings.stores_status(capture.status):
        return None
    if capture.overflowed:
        return encode_omitted(capture.status, capture.headers, settings)
    return encode_outcome(capture.status, capture.headers, capture.body(), settings)


class ResponseCapture:
    """The response of one execution, buffered up to the storable limit.

    Per request; the faces feed it the app's status, headers and body chunks. Once the body
    passes `limit` it is `overflowed`: the face streams the rest to the client instead of
    buffering it.

    Args:
        limit: the largest body buffered (`max_response_size`).
    """

    __slots__ = ("_chunks", "complete", "headers", "limit", "overflowed", "size", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: int | None = None
        self.headers: Sequence[Header] = ()
        self._chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.overflowed = False

    def start(self, status: int, headers: Sequence[Header]) -> None:
        """Record the status and headers (again, if the app restarts an error response)."""
        self.status = status
        self.headers = headers

    def add(self, chunk: bytes) -> bool:
        """Buffer `chunk`; return whether the body just passed the limit (time to stream)."""
        self.size += len(chunk)
        if self.overflowed:
            return False
        if chunk:
            self._chunks.append(chunk)
        if self.size > self.limit:
            self.overflowed = True
            return True
        return False

    def body(self) -> bytes:
        """Return the buffered body."""
        return b"".join(self._chunks)

    def take(self) -> bytes:
        """Return the buffered body and forget it (it is being streamed out)."""
        body = self.body()
        self._chunks = []
        return body


class HttpCounters:
    """Counts of what the middleware did, for monitoring; safe to read at any time."""

    __slots__ = (
        "_lock",
        "complete_failures",
        "executions",
        "fenced",
        "release_failures",
        "renew_failures",
        "replays",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.executions = 0
        """Requests that ran the handler under a claim."""
        self.replays = 0
        """Requests answered from a stored outcome."""
        self.complete_failures = 0
        """Outcomes that could not be stored after the handler ran (B19)."""
        self.fenced = 0
        """Claims found taken over by another worker when completing or renewing (B17)."""
        self.release_failures = 0
        """Claims that could not be released (they expire with their lease)."""
        self.renew_failures = 0
        """Lease renewals that failed (other than fencing)."""

    def add(self, name: str) -> None:
        """Add one to counter `name`."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        """Return every counter by name."""
        with self._lock:
            return {name: getattr(self, name) for name in self.__slots__ if name != "_lock"}


class ScopeLimiter:
    """Caps the keys one scope runs at once in this process (B36); shared by requests.

    Args:
        cap: the most in-flight executions per scope.
    """

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._running: dict[str, int] = {}
        self._lock = threading.Lock()

    def enter(self, scope: str) -> bool:
        """Take a slot for `scope`; return False (and take none) if it is at its cap."""
        with self._lock:
            running = self._running.get(scope, 0)
            if running >= self._cap:
                return False
            self._running[scope] = running + 1
            return True

    def leave(self, scope: str) -> None:
        """Give back a slot taken by `enter`."""
        with self._lock:
            running = self._running.pop(scope) - 1
            if running:
                self._running[scope] = running


def reason_phrase(status: int) -> str:
    """Return the standard reason phrase of `status`, for WSGI status lines."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def new_identity(settings: Settings, request: RequestView, key: str) -> Identity:
    """Return the record identity of a request with `key`: (namespace, scope, key) (B8)."""
    return Identity(settings.namespace, settings.scope_of(request), key)
