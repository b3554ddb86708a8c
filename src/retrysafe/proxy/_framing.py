"""What the proxy accepts and how it frames what it forwards (RFC 9110 section 7.6, RFC 9112).

Checked before the idempotency middleware runs, so a refused request never touches the store
(B37): only an origin-form request-target (`/path?query`, visible ASCII, no fragment, no `.` or
`..` segment, at most `MAX_TARGET_SIZE` bytes) is forwarded, never a CONNECT, and a request
that carries both `Transfer-Encoding` and `Content-Length` (a request smuggling pattern, RFC 9112
section 6.1) is refused and its connection closed. So is, with a problem, a method that is not
an upper-case token (httpx would forward `post` as `POST`, which the middleware did not track),
a `Connection` header that names `Idempotency-Key` (B38 forwards the key unchanged), and a
WebSocket upgrade (not proxied).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from retrysafe._http import Header, Response, problem_response
from retrysafe._http.problems import PROXY_PROBLEM_BASE_URL, PROXY_PROBLEMS

__all__ = [
    "HOP_BY_HOP_HEADERS",
    "MAX_HEAD_SIZE",
    "MAX_TARGET_SIZE",
    "end_to_end",
    "forwarded_headers",
    "invalid_framing",
    "invalid_target",
    "proxy_problem",
    "refusal",
    "request_target",
    "response_headers",
    "websocket_refused",
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
# A segment's parameters, after a `;` (RFC 3986 section 3.3): Tomcat, Jetty and Spring drop them
# before resolving, so `..;x` is `..` to them; a segment is judged by what comes before.
_PARAMETERS: Final = re.compile(rb";|%3b", re.IGNORECASE)
# An RFC 9110 method token without lower-case letters: httpx upper-cases the method it sends,
# so `post` would reach the upstream as `POST`, a method the middleware covers but did not see.
_METHOD: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
# Headers the proxy forwards or sets itself, which a `Connection` header cannot make hop-by-hop:
# the key (B38), the upstream's `Host`, and the framing the proxy checks (B37).
_MANAGED_HEADERS: Final = frozenset({b"host", b"content-length", b"idempotency-key"})
# A client's forwarding data, which an upstream could take for the proxy's: never forwarded.
# `X-Forwarded-*` goes too, but for `-For`, which is appended to; the proxy sets `Host` and
# `X-Forwarded-Proto` and `-Host` itself, whatever the client sent.
_DROPPED_REQUEST_HEADERS: Final = frozenset(
    {b"host", b"forwarded", b"x-real-ip", b"x-client-ip", b"true-client-ip"}
)


def _connection_tokens(headers: Sequence[Header]) -> frozenset[bytes]:
    """Return the header names a Connection header lists: hop-by-hop for this hop."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens)


def end_to_end(headers: Sequence[Header]) -> list[Header]:
    """Return `headers` without hop-by-hop ones (RFC 9110 section 7.6.1), names in lower case.

    A `Connection` header does not drop `Host`, `Content-Length` or `Idempotency-Key`, which
    the proxy manages (a request whose `Connection` names the key is refused: `refusal`)."""
    dropped = HOP_BY_HOP_HEADERS | (_connection_tokens(headers) - _MANAGED_HEADERS)
    return [(name.lower(), value) for name, value in headers if name.lower() not in dropped]


def proxy_problem(slug: str, detail: str, *, close: bool = False) -> Response:
    """Return the proxy's problem `slug` (a key of `PROXY_PROBLEMS`, with its status and
    title) as problem+json, its `type` an anchor of docs/proxy.md; `close`: with
    `Connection: close`."""
    status, title = PROXY_PROBLEMS[slug]
    extra = ((b"connection", b"close"),) if close else ()
    type_url = PROXY_PROBLEM_BASE_URL + slug
    return problem_response(type_url, title, status, detail, extra_headers=extra)


def request_target(path: bytes, query: bytes) -> bytes | None:
    """Return the origin-form request-target to forward, or None if it is not one (B37)."""
    if not _ORIGIN_PATH.fullmatch(path) or not _QUERY.fullmatch(query):
        return None
    for segment in _SEPARATOR.split(path):
        if _DOT_SEGMENT.fullmatch(_PARAMETERS.split(segment, 1)[0]):
            return None
    return path + b"?" + query if query else path


def invalid_target(detail: str) -> Response:
    """Return the 400 invalid-target problem: a request-target the proxy does not forward."""
    return proxy_problem("invalid-target", detail)


def invalid_framing(detail: str) -> Response:
    """Return the 400 invalid-framing problem, which closes the connection: after a request
    whose framing is in doubt, the next request's first byte is in doubt too."""
    return proxy_problem("invalid-framing", detail, close=True)


def refusal(
    method: str, raw_path: bytes, query: bytes, headers: Sequence[Header]
) -> Response | None:
    """Return the problem for a request the proxy does not forward, or None (B37): its
    framing, method, Connection, Upgrade or request-target."""
    names = {name.lower() for name, _ in headers}
    if b"transfer-encoding" in names and b"content-length" in names:
        # First: whatever else is wrong, the connection must not be read on (RFC 9112 6.1).
        return invalid_framing(
            "The request has both Transfer-Encoding and Content-Length; send only one."
        )
    refused = _head_refusal(method, headers)
    return refused if refused is not None else _target_refusal(method, raw_path, query)


def _head_refusal(method: str, headers: Sequence[Header]) -> Response | None:
    """Return the problem for a method, Connection or Upgrade the proxy cannot forward."""
    if not _METHOD.fullmatch(method):
        # 501, as RFC 9110 section 9.1 asks for a method not recognised: methods are
        # case-sensitive, so `post` is not POST, and the proxy cannot forward it as it is.
        return proxy_problem(
            "unsupported-method",
            "The proxy forwards only methods in upper case (RFC 9110 tokens): methods are "
            "case-sensitive, and `post` is not POST.",
        )
    if b"idempotency-key" in _connection_tokens(headers):
        return proxy_problem(
            "hop-by-hop-key",
            "The Connection header names Idempotency-Key, which the proxy forwards to the "
            "upstream unchanged; remove it from Connection.",
        )
    return websocket_refused() if _websocket(headers) else None


def _target_refusal(method: str, raw_path: bytes, query: bytes) -> Response | None:
    """Return the problem for a request-target the proxy does not forward (B37)."""
    if len(raw_path) + (1 + len(query) if query else 0) > MAX_TARGET_SIZE:
        return proxy_problem(
            "target-too-long",
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
            "'%5C', and is judged without its ';' parameters), then an optional query, in "
            "visible ASCII (percent-encode the rest)."
        )
    return None


def websocket_refused() -> Response:
    """Return the 501 unsupported-upgrade problem: the proxy forwards no WebSocket."""
    return proxy_problem(
        "unsupported-upgrade",
        "The proxy does not forward WebSocket connections; only HTTP requests.",
    )


def forwarded_headers(
    headers: Sequence[Header], *, client: str | None, scheme: str, whole: bool
) -> list[Header]:
    """Return the headers to forward with a request: its end-to-end ones but the client's
    forwarding data, with `X-Forwarded-For` appended to (`client`) and `X-Forwarded-Proto` and
    `-Host` set; a received `Content-Length` only beside a body streamed under it (not
    `whole`)."""
    forwarded = [(name, value) for name, value in end_to_end(headers) if not _dropped(name)]
    if whole:
        # The length of what is forwarded, set by httpx; never a received Content-Length.
        forwarded = [(name, value) for name, value in forwarded if name != b"content-length"]
    if client:
        chain = [value for name, value in forwarded if name == b"x-forwarded-for"]
        forwarded = [(name, value) for name, value in forwarded if name != b"x-forwarded-for"]
        forwarded.append((b"x-forwarded-for", b", ".join([*chain, client.encode("latin-1")])))
    forwarded.append((b"x-forwarded-proto", scheme.encode("latin-1")))
    host = next((value for name, value in headers if name.lower() == b"host"), None)
    if host is not None:
        forwarded.append((b"x-forwarded-host", host))
    return forwarded


def _dropped(name: bytes) -> bool:
    """Whether a request header (its lower-case `name`) is not forwarded. Names are compared
    with `_` as `-`: a WSGI or CGI upstream reads `X_Real_IP` as `X-Real-IP` (both are
    `HTTP_X_REAL_IP`), so the one spelling is dropped with the other, and so is an
    `X_Forwarded_For` (the proxy's own `X-Forwarded-For` is the one chain it forwards)."""
    if b"_" in name:
        name = name.replace(b"_", b"-")
        if name == b"x-forwarded-for":
            return True
    if name.startswith(b"x-forwarded-"):
        return name != b"x-forwarded-for"
    return name in _DROPPED_REQUEST_HEADERS


def response_headers(status: int, headers: Sequence[Header]) -> list[Header]:
    """Return the headers to send back with an upstream's response of `status`."""
    sent = end_to_end(headers)
    framed = any(name.lower() == b"transfer-encoding" for name, _ in headers)
    if framed or status < 200 or status in (204, 304):
        # RFC 9112 section 6.3: Transfer-Encoding framed the body, so a Content-Length beside it
        # is not its length; the server frames what it sends itself. RFC 9110 section 8.6: no
        # Content-Length in a 1xx or 204, and in a 304 only the length a 200 would have had,
        # which the proxy cannot check.
        sent = [(name, value) for name, value in sent if name != b"content-length"]
    return sent


def _websocket(headers: Sequence[Header]) -> bool:
    """Whether the request asks to upgrade to WebSocket (RFC 6455), whatever the ASGI server
    makes of it: without a WebSocket library, uvicorn passes it on as a plain request."""
    for name, value in headers:
        if name.lower() == b"upgrade":
            protocols = (token.strip().split(b"/")[0] for token in value.split(b","))
            if any(protocol.lower() == b"websocket" for protocol in protocols):
                return True
    return False
