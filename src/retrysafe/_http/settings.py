"""HTTP settings: what the middleware does, per app and per route, and the request view."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias, TypedDict
from urllib.parse import quote

from retrysafe._clock import check_durations
from retrysafe._errors import ConfigurationError
from retrysafe._fingerprint import fingerprint_request
from retrysafe._flow.admission import DEFAULT_LEASE, DEFAULT_RETENTION, DEFAULT_WAIT
from retrysafe._keys import KeyPolicy
from retrysafe._values import quick_init

logger = logging.getLogger("retrysafe.http")
"""Where the HTTP middleware logs failures to store, release and renew."""

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
# Always stored with the body, whatever the allow-list says: they tell how the stored bytes are
# decoded and interpreted, so a replay is the same representation as the first answer (B11).
REPRESENTATION_HEADERS: Final = frozenset(
    {
        "content-disposition",  # inline or an attachment, and its file name
        "content-encoding",
        "content-language",
        "content-range",
        "content-type",
        "vary",
    }
)
# Stored with the status that requires them (RFC 9110): a 405 names the methods allowed, a 401
# its authentication scheme, whatever the allow-list says.
STATUS_HEADERS: Final = {405: b"allow", 401: b"www-authenticate"}
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

Anonymous: TypeAlias = Literal["reject", "shared"]
"""What a keyed request with no principal and no credential gets (B8)."""
OutcomePolicy: TypeAlias = Literal["definitive", "all"] | Callable[[int], bool]
"""Which response statuses are stored: "definitive" (the default), "all", or a predicate."""

Header: TypeAlias = tuple[bytes, bytes]


@quick_init
@dataclass(frozen=True, slots=True)
class RequestView:
    """What a scope function sees of a request, the same under ASGI and WSGI.

    Attributes:
        method: the request method, upper case.
        path: the decoded request path.
        query_string: the raw query string, without the `?`.
        headers: the request header lines, names in lower case.
        raw: the ASGI scope or the WSGI environ, for values set by outer layers (`user`).
        principal: the authenticated caller's stable name, when the face knows one (B8).
        raw_path: the path as the client sent it, percent-encoding kept, when the server gives
            it (ASGI `raw_path`, WSGI `RAW_URI`/`REQUEST_URI`); else None (B12).
    """

    method: str
    path: str
    query_string: bytes
    headers: Sequence[Header]
    raw: Mapping[str, object]
    principal: str | None = None
    raw_path: bytes | None = None

    def header(self, name: str) -> bytes | None:
        """Return the value of header `name` (lines joined by ", "), or None if absent."""
        wanted = name.lower().encode("latin-1")
        values = [value for key, value in self.headers if key == wanted]
        return b", ".join(values) if values else None


def _definitive(status: int) -> bool:
    # 2xx, 3xx (a 303 after a POST is a final answer too) and 4xx, except 408 and 429 (try
    # again later) and 307 and 308 (send the same request to another URI: a router's
    # trailing-slash redirect, say, where nothing ran). Another retrysafe layer's 409 is
    # released too (outcome.transient_conflict: it needs the headers and the body).
    return 200 <= status < 500 and status not in _NOT_DEFINITIVE


_NOT_DEFINITIVE: Final = frozenset({307, 308, 408, 429})


class SettingsOptions(TypedDict, total=False):
    """The keyword options of the middleware: the fields of `Settings` (see its docstring)."""

    methods: Collection[str]
    required: bool
    key_policy: KeyPolicy
    scope_header: str
    scope_function: Callable[[RequestView], str | None] | None
    anonymous: Anonymous
    scope_secret: str | bytes | None
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
        scope_header: the credential header hashed into the scope (B8), such as `X-API-Key`,
            when the framework names no authenticated principal.
        scope_function: a function of the request returning its scope, or None to refuse it;
            replaces the principal and `scope_header`.
        anonymous: a keyed request with no principal and no credential is refused with the
            400 `scope-missing` problem ("reject"), or shares one anonymous scope ("shared").
        scope_secret: the HMAC key scopes are hashed with (at least 16 bytes); default the
            `RETRYSAFE_SCOPE_SECRET` environment variable, else one generated and kept in the
            store on first use.
        fingerprint: "raw" hashes the body bytes, "json" canonical JSON (B12).
        namespace: separates these records from other uses of the same store.
        retention: seconds a completed outcome is kept and replayed (B21).
        lease: seconds an in-flight claim holds before a retry may take it over (B16).
        wait: seconds a duplicate waits for the first request's outcome; 0 answers 409 (B15).
        mismatch_status: the status for a key reused with another request: 422, 400 or 409.
        replay_header: the header that marks a replayed response (B10).
        stored_headers: the response headers stored and replayed (B11), case-insensitive;
            `REPRESENTATION_HEADERS` (Content-Encoding, Content-Type, Content-Language,
            Content-Range, Vary) are always stored too.
        outcomes: which statuses are stored (B18): "definitive", "all", or a predicate.
            "definitive" also releases a 409 `request-in-flight` problem (another retrysafe
            layer behind this one); an app's own 409 is stored, `Retry-After` or not.
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
    scope_function: Callable[[RequestView], str | None] | None = None
    anonymous: Anonymous = "reject"
    scope_secret: str | bytes | None = field(default=None, repr=False)
    fingerprint: Literal["raw", "json"] = "raw"
    namespace: str = "http"
    retention: float = DEFAULT_RETENTION
    lease: float = DEFAULT_LEASE
    wait: float = DEFAULT_WAIT
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
        check_durations(self.lease, self.retention, self.wait)
        if self.max_body_size < 0 or self.max_response_size < 0:
            raise ConfigurationError("Size limits must not be negative.")
        if self.max_in_flight_per_scope is not None and self.max_in_flight_per_scope < 1:
            raise ConfigurationError("max_in_flight_per_scope must be at least 1, or None.")
        if self.anonymous not in ("reject", "shared"):
            raise ConfigurationError('anonymous must be "reject" or "shared".')
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
        kept = stored | REPRESENTATION_HEADERS
        object.__setattr__(self, "stored_header_names", frozenset(h.encode() for h in kept))
        object.__setattr__(self, "replay_header_name", self.replay_header.lower().encode())
        object.__setattr__(self, "stores_status", stores_status)

    def fingerprint_of(self, request: RequestView, body: bytes) -> str:
        """Return the fingerprint of `request` with `body`: the method, the request-target as
        received (the raw path where the server gives it, else the path quoted again) with its
        query, and the body (B12). `/pay/x` and `/pay%2Fx` are two requests."""
        if request.raw_path is not None:
            target = request.raw_path.decode("latin-1")
        else:
            target = quote(request.path, safe="/:@!$&'()*+,;=-._~")
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
    anonymous: Anonymous | None = None
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
