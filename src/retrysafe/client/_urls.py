"""The client's two rules about URLs: how one is shown, and which redirect keeps the key.

A URL in a log line, an error message or a `RetryEvent` is shown by `shown_url`, never as
given: a request URL can carry credentials the client cannot recognise (a secret key as the
user name, a signature or an API key in any query parameter), so it hides them all.

A 307 or 308 redirect repeats the same method with the same body: it is the same operation,
asked for at another URL. Sent to the same origin it keeps the key of the request it redirects
(`redirect_keeps_key`), so that a redirect that answers a retry after an unknown outcome cannot
apply the operation a second time; the worst a server can answer is that the key is already
used for another request (422). A key the client generated never leaves its origin.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import SplitResult, urljoin, urlsplit

from retrysafe._urls import redact_url

__all__ = ["redirect_keeps_key", "same_origin", "shown_url"]

_HIDDEN: Final = "***"
_KEY_KEEPING_REDIRECTS: Final = frozenset({307, 308})  # RFC 9110 15.4.8-9: method and body kept
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def shown_url(url: str) -> str:
    """Return `url` fit to log: its user information and every query value are `***`, and its
    fragment (never sent) is left out: `https://***@api.example/pay?token=***&id=***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_url(url)  # its scheme only
    _, at, host = parts.netloc.rpartition("@")
    netloc = f"{_HIDDEN}@{host}" if at else host
    items = (item.partition("=") for item in parts.query.split("&")) if parts.query else ()
    query = "&".join(f"{name}={_HIDDEN}" if equals else _HIDDEN for name, equals, _ in items)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def redirect_keeps_key(status: int, url: str, location: str | None) -> bool:
    """Whether the redirect of a keyed request to `url`, answered `status` with `location`,
    is sent with the same key: a 307 or 308 to the same origin (scheme, host and port)."""
    if status not in _KEY_KEEPING_REDIRECTS or location is None:
        return False
    return same_origin(url, urljoin(url, location))


def same_origin(url: str, other: str) -> bool:
    """Whether two absolute URLs have one origin (scheme, host and port)."""
    try:
        return _origin(urlsplit(url)) == _origin(urlsplit(other))
    except ValueError:  # a port out of range or a malformed host: not known to be the same
        return False


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    scheme = parts.scheme.lower()
    return scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(scheme)
