"""The httpx client `ProxyApp` forwards with, whose pooled connections never carry bytes from
one exchange into the next.

httpcore puts an HTTP/1.1 connection back in its pool once a response is complete, even when
the upstream sent bytes past that response's end: a body with a 204, a 304 or an answer to
HEAD, more bytes than its `Content-Length`, a second answer. The next request on that
connection, whoever sent it, would read those bytes as its own answer: another client's data
stored and replayed under its key, or a 502 for a request the upstream carried out.

So a connection goes back to the pool only when nothing can follow the response on it: never
after an answer to HEAD, a 204 or a 304 (the stray body may still be on its way), nor when
httpcore read bytes past the response. That check reads httpcore's private state; where it
cannot (httpcore changed), the connection is not reused: the proxy loses keep-alive, never
its answers. Bytes that arrive later on an idle connection make httpcore close it itself.
"""

from __future__ import annotations

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Final

import h11
import httpcore
import httpx

__all__ = ["upstream_client"]

_CONNECT_TIMEOUT: Final = 5.0
_KEEPALIVE: Final = 100
"""The most idle connections to the upstream kept for reuse."""
_NO_BODY_STATUSES: Final = frozenset({204, 304})


def upstream_client(timeout: float, deadline: float) -> httpx.AsyncClient:
    """Return the client the proxy owns: connections checked before reuse, no redirects
    followed, nothing from the environment, and no cookies kept."""
    return httpx.AsyncClient(
        transport=_transport(),
        # The waits are bounded by `timeout` and `deadline`; a streamed response by `deadline`
        # between two reads.
        timeout=httpx.Timeout(deadline, connect=min(_CONNECT_TIMEOUT, timeout)),
        follow_redirects=False,
        trust_env=False,
        # Never keep one client's cookies (they are not sent anyway: `ProxyApp._request`).
        cookies=CookieJar(DefaultCookiePolicy(allowed_domains=())),
    )


def _transport() -> httpx.AsyncHTTPTransport:
    """Return httpx's transport over `CheckedPool`, or, if httpx no longer keeps its pool
    where this expects it, over a pool that keeps no connection alive."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=_KEEPALIVE)
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    if type(getattr(transport, "_pool", None)) is not httpcore.AsyncConnectionPool:
        unpooled = httpx.Limits(max_connections=None, max_keepalive_connections=0)
        return httpx.AsyncHTTPTransport(limits=unpooled, trust_env=False)
    # httpx takes no pool of one's own: its private `_pool` is replaced (checked above).
    transport._pool = CheckedPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=None,
        max_keepalive_connections=_KEEPALIVE,
        keepalive_expiry=limits.keepalive_expiry,
    )
    return transport


class CheckedPool(httpcore.AsyncConnectionPool):
    """httpcore's pool, whose connections are reused only when nothing follows the last
    response on them (`CheckedConnection`)."""

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        """Return a new connection to `origin`, checked before each reuse."""
        return CheckedConnection(super().create_connection(origin))


class CheckedConnection(httpcore.AsyncConnectionInterface):
    """A pooled connection that expires instead of being reused once the upstream sent, or
    may still send, bytes past the end of its last response.

    Args:
        connection: the connection httpcore made.
    """

    def __init__(self, connection: httpcore.AsyncConnectionInterface) -> None:
        self._connection = connection
        self._spent = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """Send `request`; after an answer that has no body, never reuse the connection: a
        body sent by mistake may arrive after the answer ended."""
        response = await self._connection.handle_async_request(request)
        self._spent = request.method == b"HEAD" or response.status in _NO_BODY_STATUSES
        return response

    def has_expired(self) -> bool:
        """httpcore's expiry (keep-alive over, or the upstream closed), or, once idle, spent
        or holding bytes that no request asked for."""
        connection = self._connection
        if connection.has_expired():
            return True
        return connection.is_idle() and (self._spent or holds_more(connection))

    def is_available(self) -> bool:
        """Whether the connection can take a request now: idle, and not expired."""
        return self._connection.is_available() and not self.has_expired()

    async def aclose(self) -> None:
        """Close the connection."""
        await self._connection.aclose()

    def info(self) -> str:
        """Describe the connection, as httpcore does."""
        return self._connection.info()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        """Whether the connection goes to `origin`."""
        return self._connection.can_handle_request(origin)

    def is_idle(self) -> bool:
        """Whether the connection is between two exchanges."""
        return self._connection.is_idle()

    def is_closed(self) -> bool:
        """Whether the connection is closed."""
        return self._connection.is_closed()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._connection!r}>"


def holds_more(connection: object) -> bool:
    """Whether httpcore read bytes past the last response on `connection`, or the end of the
    stream: True also when its state cannot be read, so that a changed httpcore means no
    reuse rather than a blind one."""
    # httpcore's private attributes: the HTTP/1.1 connection, then its h11 state machine,
    # whose buffer keeps what was read past the response.
    http11 = getattr(connection, "_connection", None)
    state = getattr(http11, "_h11_state", None)
    if not isinstance(state, h11.Connection):
        return True
    data, closed = state.trailing_data
    return bool(data) or closed
