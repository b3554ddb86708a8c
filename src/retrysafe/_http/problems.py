"""RFC 9457 problem+json answers, and the checks before a claim that produce them (B1-B6, B24)."""

from __future__ import annotations

import http
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from retrysafe._errors import InvalidKeyError
from retrysafe._flow.admission import IN_FLIGHT_RETRY_AFTER
from retrysafe._flow.observing import decide
from retrysafe._http.settings import DEFAULT_PROBLEM_BASE_URL, Header, Settings
from retrysafe._keys import parse_key

__all__ = [
    "PROBLEMS",
    "PROXY_PROBLEMS",
    "PROXY_PROBLEM_BASE_URL",
    "TRANSACTION_PROBLEM_BASE_URL",
    "Response",
    "body_unavailable",
    "check_content_length",
    "in_flight",
    "incomplete",
    "mismatch",
    "problem",
    "problem_catalogue",
    "problem_response",
    "problem_type",
    "read_key",
    "reason_phrase",
    "scope_missing",
    "store_unavailable",
    "too_large",
    "too_many_in_flight",
]

# Seconds a client should wait before retrying, per problem.
_RETRY_STORE: Final = 2
_IN_FLIGHT: Final = (
    "The first request with this Idempotency-Key is still being processed. Retry later to get "
    "its response."
)
_UNAVAILABLE: Final = (
    "The idempotency store cannot be reached, so the request was not processed. Retry later."
)
_COMMIT_UNKNOWN: Final = (
    "The request's transaction got no reply to its COMMIT, so it may or may not have been "
    "applied. Retry with the same Idempotency-Key only: it replays the response if it was "
    "applied, and runs the request if not. A new key could apply it twice."
)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response to send: status, header lines, body."""

    status: int
    headers: tuple[Header, ...]
    body: bytes


PROBLEMS: Final[Mapping[str, tuple[int, str]]] = {
    "invalid-key": (400, "Invalid Idempotency-Key"),
    "scope-missing": (400, "No caller to scope the Idempotency-Key to"),
    "scope-unresolved": (500, "The caller of the Idempotency-Key could not be named"),
    "key-required": (400, "Idempotency-Key is required"),
    "key-mismatch": (422, "Idempotency-Key is already used"),
    "request-in-flight": (409, "A request is outstanding for this Idempotency-Key"),
    "body-too-large": (413, "Request body too large"),
    "body-incomplete": (400, "Request body incomplete"),
    "body-unavailable": (500, "Request body not available"),
    "response-not-stored": (410, "The response for this Idempotency-Key was not stored"),
    "too-many-in-flight": (429, "Too many requests in flight"),
    "store-unavailable": (503, "Idempotency store unavailable"),
    "outcome-unreadable": (500, "Stored outcome unreadable"),
    "transaction-aborted": (500, "Transaction aborted"),
}
"""Every problem the HTTP middleware and transactional mode answer with: its docs anchor (the
`type`, `problem_type`) -> (default status, title)."""
TRANSACTION_PROBLEM_BASE_URL: Final = DEFAULT_PROBLEM_BASE_URL.replace("/http/", "/transactions/")
"""Where transactional mode's own problems are anchors (docs/transactions.md), whatever the
`problem_base_url`, which names the HTTP middleware's: as the proxy's are anchors of its page."""
PROXY_PROBLEMS: Final[Mapping[str, tuple[int, str]]] = {
    "invalid-target": (400, "Invalid request-target"),
    "unsupported-method": (501, "Method not supported"),
    "hop-by-hop-key": (400, "Idempotency-Key named in Connection"),
    "unsupported-upgrade": (501, "WebSocket not proxied"),
    "target-too-long": (414, "Request-target too long"),
    "invalid-framing": (400, "Invalid message framing"),
    "body-too-large": (413, "Request body too large"),
    "body-timeout": (408, "Request body timed out"),
    "upstream-unreachable": (502, "Upstream unreachable"),
    "upstream-timeout": (504, "Upstream timed out"),
    "upstream-failed": (502, "Upstream failed"),
    "outcome-unknown": (502, "Outcome unknown"),
}
"""Every problem the proxy answers itself (`retrysafe.proxy`): its docs anchor -> (status,
title). Its `type` is that section of docs/proxy.md (`PROXY_PROBLEM_BASE_URL`), whatever the
`problem_base_url`; the proxy answers those of `PROBLEMS` too, from the middleware it runs
behind. A name may be in both (`body-too-large`): two types, on two pages."""
PROXY_PROBLEM_BASE_URL: Final = DEFAULT_PROBLEM_BASE_URL.replace("/http/", "/proxy/")
"""Where the proxy's own problems are anchors (docs/proxy.md)."""
_TRANSACTION_PROBLEMS: Final = frozenset({"transaction-aborted"})
_DECISION_OF: Final = {
    "key-mismatch": "mismatch",  # (the flow decided these already, but transactional mode)
    "request-in-flight": "in_flight",
    "invalid-key": "invalid",
    "key-required": "rejected",
    "scope-missing": "rejected",
    "scope-unresolved": "rejected",
    "too-many-in-flight": "rejected",
    "body-too-large": "too_large",
    "body-incomplete": "rejected",
    "body-unavailable": "rejected",
    "store-unavailable": "unavailable",
}
"""The observed decision (`retrysafe.observe.DECISIONS`) of each refusal."""


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
    decision = _DECISION_OF.get(slug)
    if decision is not None:  # the refusals answered before the flow decides (B3-B9, B20)
        decide(decision)
    extra = ((settings.replay_header_name, b"true"),) if replayed else ()
    return problem_response(
        problem_type(slug, settings),
        title,
        status or default_status,
        detail,
        retry_after=retry_after,
        extra_headers=extra,
    )


def problem_type(slug: str, settings: Settings) -> str:
    """Return the `type` of problem `slug`: its anchor under `problem_base_url`, or under
    `TRANSACTION_PROBLEM_BASE_URL` for transactional mode's own."""
    if slug in _TRANSACTION_PROBLEMS:
        return TRANSACTION_PROBLEM_BASE_URL + slug
    return settings.problem_base_url + slug


def problem_catalogue() -> dict[str, tuple[int, str]]:
    """Return every problem any face answers, by its default `type` (a documented section):
    the HTTP middleware's and transactional mode's (`PROBLEMS`), and the proxy's own
    (`PROXY_PROBLEMS`) -> (default status, title)."""
    catalogue = {problem_type(slug, Settings()): known for slug, known in PROBLEMS.items()}
    catalogue.update((PROXY_PROBLEM_BASE_URL + slug, k) for slug, k in PROXY_PROBLEMS.items())
    return catalogue


def problem_response(
    type_url: str,
    title: str,
    status: int,
    detail: str,
    *,
    retry_after: int | None = None,
    extra_headers: Sequence[Header] = (),
    extensions: Mapping[str, object] | None = None,
) -> Response:
    """Return an RFC 9457 `application/problem+json` response, `Cache-Control: no-store` (B24).

    `extensions` are extra members of the body (RFC 9457 section 3.2); they never replace
    `type`, `title`, `status` or `detail`.
    """
    members: dict[str, object] = {
        "type": type_url,
        "title": title,
        "status": status,
        "detail": detail,
    }
    for name, value in (extensions or {}).items():
        members.setdefault(name, value)
    body = json.dumps(members, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    headers.extend(extra_headers)
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


def incomplete(settings: Settings, received: int, announced: int) -> Response:
    """Return the 400 problem for a request body that ended before its Content-Length."""
    return problem(
        "body-incomplete",
        settings,
        f"The request body ended after {received} of the {announced} bytes its Content-Length "
        "announced; nothing ran. Send the whole body again.",
    )


def body_unavailable(settings: Settings) -> Response:
    """Return the 500 problem for a keyed request whose body the app read (parsed a form, say)
    before the idempotency check could fingerprint it (B12): nothing ran, nothing was stored."""
    return problem(
        "body-unavailable",
        settings,
        "The request body was read before its Idempotency-Key could be checked, so the request "
        "was not processed. This is a server configuration error; see the documentation.",
    )


def check_content_length(value: bytes | None, settings: Settings) -> Response | None:
    """Return the 413 problem if a Content-Length announces too large a body, else None."""
    if value is not None and value.isdigit() and int(value) > settings.max_body_size:
        return too_large(settings)
    return None


def scope_missing(settings: Settings, detail: str | None = None) -> Response:
    """Return the 400 problem for a keyed request with no scope (B8): nothing was stored.
    `detail` says why, where the request's own input names no caller (`NoCaller`)."""
    if detail is None and settings.scope_function is not None:
        detail = "The scope function named no scope for this request, so it was not processed."
    elif detail is None:
        detail = (
            "This request has an Idempotency-Key but no authenticated user and no "
            f"{settings.scope_header} credential to keep its key apart from other callers'. "
            "Authenticate, or send the request without an Idempotency-Key."
        )
    return problem("scope-missing", settings, detail)


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
    return problem("request-in-flight", settings, _IN_FLIGHT, retry_after=IN_FLIGHT_RETRY_AFTER)


def store_unavailable(settings: Settings, *, commit_unknown: bool = False) -> Response:
    """Return the 503 problem for a store that cannot be reached (B20); `commit_unknown`: for
    a request whose transaction's COMMIT got no reply, which may have been applied."""
    detail = _COMMIT_UNKNOWN if commit_unknown else _UNAVAILABLE
    return problem("store-unavailable", settings, detail, retry_after=_RETRY_STORE)


def too_many_in_flight(settings: Settings) -> Response:
    """Return the 429 problem for a scope over its in-flight cap (B36)."""
    return problem(
        "too-many-in-flight",
        settings,
        f"At most {settings.max_in_flight_per_scope} requests with Idempotency-Keys may be "
        "processed at once for one client. Retry later.",
        retry_after=IN_FLIGHT_RETRY_AFTER,
    )


def reason_phrase(status: int) -> str:
    """Return the standard reason phrase of `status`, for WSGI status lines."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
