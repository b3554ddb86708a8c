"""What the proxy accepts and how it frames what it forwards (RFC 9110 section 7.6, RFC 9112).

Checked before the idempotency middleware runs, so a refused request never touches the store
(B37): only an origin-form request-target (`/path?query`, visible ASCII, no fragment, no `.` or
`..` segment, at most `MAX_TARGET_SIZE` bytes) is forwarded, never a CONNECT, and a request
that carries both `Transfer-Encoding` and `Content-Length` (a request smuggling pattern, RFC 9112
section 6.1) is refused and its connection closed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from retrysafe._http import DEFAULT_PROBLEM_BASE_URL, Header, Response, problem_response

__all__ = [
    "HOP_BY_HOP_HEADERS",
    "MAX_HEAD_SIZE",
    "MAX_TARGET_SIZE",
    "end_to_end",
    "invalid_framing",
    "invalid_target",
    "proxy_problem",
    "refusal",
    "request_target",
]

HOP_BY_HOP_HEADERS: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
PROBLEM_BASE_URL: Final = DEFAULT_PROBLEM_BASE_URL.replace("/http/", "/proxy/")
MAX_TARGET_SIZE: Final = 8192
"""The longest request-target forwarded, in bytes; a longer one gets 414 (RFC 9112 section 3
asks for at least 8000 octets of request line)."""
MAX_HEAD_SIZE: Final = 16 * 1024
"""The largest request head buffered while it arrives in pieces, in bytes; past it, the
invalid-framing problem."""

# RFC 9112 origin-form: an absolute path, then an optional query; only visible ASCII (percent-
# encoded otherwise), no fragment. Anything else could name another authority.
_ORIGIN_PATH: Final = re.compile(rb"/[\x21-\x22\x24-\x7e]*")
_QUERY: Final = re.compile(rb"[\x21-\x22\x24-\x7e]*")
# A `.` or `..` segment, literal or percent-encoded (`%2e`, `.%2E`...): httpx resolves the literal
# ones (RFC 3986 section 5.2.4), which would climb out of the upstream's path prefix, and an
# upstream may decode and resolve the encoded ones itself. For the same reason a segment ends at
# an encoded slash or a backslash too (`/..%2f..%2fadmin`, `/..%5cadmin`, `/..\\admin`): an
# upstream may decode the one, or take the other for a slash, as many servers do.
_DOT_SEGMENT: Final = re.compile(rb"(?:\.|%2e){1,2}", re.IGNORECASE)
_SEPARATOR: Final = re.compile(rb"/|\\|%2f|%5c", re.IGNORECASE)


def _connection_tokens(headers: Sequence[Header]) -> frozenset[bytes]:
    """Return the header names a Connection header lists: hop-by-hop for this hop."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def end_to_end(headers: Sequence[Header]) -> list[Header]:
    """Return `headers` without hop-by-hop ones (RFC 9110 section 7.6.1), names in lower case."""
    dropped = HOP_BY_HOP_HEADERS | _connection_tokens(headers)
    return [(name.lower(), value) for name, value in headers if name.lower() not in dropped]


def proxy_problem(
    status: int, slug: str, title: str, detail: str, *, close: bool = False
) -> Response:
    """Return a problem+json response whose `type` is an anchor of docs/proxy.md."""
    extra = ((b"connection", b"close"),) if close else ()
    return problem_response(PROBLEM_BASE_URL + slug, title, status, detail, extra_headers=extra)


def request_target(path: bytes, query: bytes) -> bytes | None:
    """Return the origin-form request-target to forward, or None if it is not one (B37)."""
    if not _ORIGIN_PATH.fullmatch(path) or not _QUERY.fullmatch(query):
        return None
    if any(_DOT_SEGMENT.fullmatch(segment) for segment in _SEPARATOR.split(path)):
        return None
    return path + b"?" + query if query else path


def invalid_target(detail: str) -> Response:
    """Return the 400 invalid-target problem: a request-target the proxy does not forward."""
    return proxy_problem(400, "invalid-target", "Invalid request-target", detail)


def invalid_framing(detail: str) -> Response:
    """Return the 400 invalid-framing problem, which closes the connection: after a request
    whose framing is in doubt, the next request's first byte is in doubt too."""
    return proxy_problem(400, "invalid-framing", "Invalid message framing", detail, close=True)


def refusal(
    method: str, raw_path: bytes, query: bytes, headers: Sequence[Header]
) -> Response | None:
    """Return the problem for a request the proxy does not forward, or None (B37)."""
    names = {name.lower() for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        # First: whatever else is wrong, the connection must not be read on (RFC 9112 6.1).
        return invalid_framing(
            "The request has both Transfer-Encoding and Content-Length; send only one."
        )
    if len(raw_path) + (1 + len(query) if query else 0) > MAX_TARGET_SIZE:
        return proxy_problem(
            414,
            "target-too-long",
            "Request-target too long",
            f"The proxy forwards request-targets of at most {MAX_TARGET_SIZE} bytes.",
        )
    if method == "CONNECT":
        return invalid_target(
            "The proxy does not tunnel: CONNECT takes an authority-form target, and the "
            "proxy forwards only origin-form ones."
        )
    if request_target(raw_path, query) is None:
        return invalid_target(
            "The proxy forwards only origin-form request-targets: an absolute path starting "
            "with '/' and with no '.' or '..' segment (a segment also ends at '\\', '%2F' or "
            "'%5C'), then an optional query, in visible ASCII (percent-encode the rest)."
        )
    return None
