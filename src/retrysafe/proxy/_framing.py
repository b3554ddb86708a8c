"""What the proxy accepts and how it frames what it forwards (RFC 9110 section 7.6, RFC 9112).

Checked before the idempotency middleware runs, so a refused request never touches the store
(B37): only an origin-form request-target (`/path?query`, visible ASCII, no fragment, no `.` or
`..` segment) is forwarded, and a request that carries both `Transfer-Encoding` and
`Content-Length` (a request smuggling pattern, RFC 9112 section 6.1) is refused and its
connection closed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from retrysafe._http import DEFAULT_PROBLEM_BASE_URL, Header, Response, problem_response

__all__ = ["HOP_BY_HOP_HEADERS", "end_to_end", "proxy_problem", "refusal", "request_target"]

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

# RFC 9112 origin-form: an absolute path, then an optional query; only visible ASCII (percent-
# encoded otherwise), no fragment. Anything else could name another authority.
_ORIGIN_PATH: Final = re.compile(rb"/[\x21-\x22\x24-\x7e]*")
_QUERY: Final = re.compile(rb"[\x21-\x22\x24-\x7e]*")
# A `.` or `..` segment, literal or percent-encoded (`%2e`, `.%2E`...): httpx resolves the literal
# ones (RFC 3986 section 5.2.4), which would climb out of the upstream's path prefix, and an
# upstream may decode and resolve the encoded ones itself.
_DOT_SEGMENT: Final = re.compile(rb"(?:\.|%2e){1,2}", re.IGNORECASE)


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
    if any(_DOT_SEGMENT.fullmatch(segment) for segment in path.split(b"/")):
        return None
    return path + b"?" + query if query else path


def refusal(raw_path: bytes, query: bytes, headers: Sequence[Header]) -> Response | None:
    """Return the 400 problem for a request the proxy does not forward, or None (B37)."""
    if request_target(raw_path, query) is None:
        return proxy_problem(
            400,
            "invalid-target",
            "Invalid request-target",
            "The proxy forwards only origin-form request-targets: an absolute path starting "
            "with '/' and with no '.' or '..' segment, then an optional query, in visible "
            "ASCII (percent-encode the rest).",
        )
    names = {name.lower() for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        return proxy_problem(
            400,
            "invalid-framing",
            "Conflicting message framing",
            "The request has both Transfer-Encoding and Content-Length; send only one.",
            close=True,
        )
    return None
