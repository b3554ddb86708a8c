"""`ProxyApp`: forwards one HTTP request to the upstream with httpx and sends the answer back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import quote

import httpx

from retrysafe._errors import ConfigurationError
from retrysafe._http import MIB, Response
from retrysafe._http.asgi_io import run_lifespan
from retrysafe.asgi import Message, Receive, Scope, Send
from retrysafe.proxy._framing import end_to_end, proxy_problem, refusal, request_target

__all__ = ["ProxyApp", "RequestGuard", "raw_target"]

# Set by the proxy itself, whatever the client sent (X-Forwarded-For is appended to instead).
_REPLACED_REQUEST_HEADERS: Final = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host"})
_DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being forwarded."""


class UpstreamBrokeError(Exception):
    """The upstream's response broke after its first bytes reached the client: abort it."""


def raw_target(scope: Scope) -> tuple[bytes, bytes]:
    """Return the request's path and query as the client sent them."""
    path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
    return path, scope.get("query_string", b"")


class RequestGuard:
    """ASGI: answer 400 to a request the proxy would not forward, before anything else runs."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless its target or framing is refused (B37)."""
        if scope["type"] == "http":
            refused = refusal(*raw_target(scope), scope["headers"])
            if refused is not None:
                await _respond(send, refused)
                return
        await self.app(scope, receive, send)


class ProxyApp:
    """An ASGI app that forwards each HTTP request to `upstream` and sends the answer back.

    A response up to `buffer_size` bytes is read whole before it is sent, so an upstream that
    breaks it gives a 502 problem; a larger one is streamed, and a break aborts the connection.

    Args:
        upstream: the base URL of the service, `http://host:port` (a path prefix is kept).
        client: the httpx client to forward with (default: one owned and closed by the app).
        timeout: the httpx timeout for upstream requests (default: 5 s to connect, 60 s else).
        buffer_size: the largest response read whole before sending (default 1 MiB).
        on_shutdown: coroutines to run at lifespan shutdown (closing the store, say).
    """

    def __init__(
        self,
        upstream: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = None,
        buffer_size: int = MIB,
        on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        try:
            url = httpx.URL(upstream)
        except httpx.InvalidURL as error:
            raise ConfigurationError(f"Invalid upstream URL {upstream!r}: {error}") from error
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"The upstream is an http:// or https:// URL with a host, not {upstream!r}."
            )
        if url.query or url.fragment:
            raise ConfigurationError(f"The upstream URL takes no query or fragment: {upstream!r}.")
        self.upstream = upstream.rstrip("/")
        self._base = url
        self._prefix = url.raw_path.rstrip(b"/")
        self._buffer_size = buffer_size
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=_DEFAULT_TIMEOUT if timeout is None else timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            follow_redirects=False,
            trust_env=False,
        )
        self._on_shutdown = list(on_shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one HTTP request; run the lifespan; refuse WebSockets (not proxied)."""
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send, self.aclose)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def aclose(self) -> None:
        """Close the httpx client (if the app made it) and run the shutdown callbacks."""
        if self._owns_client:
            await self._client.aclose()
        for callback in self._on_shutdown:
            await callback()

    def upstream_url(self, path: bytes, query: bytes = b"") -> httpx.URL:
        """Return the upstream URL for an origin-form target: always the upstream's authority."""
        target = request_target(path, query)
        url = None if target is None else self._base.copy_with(raw_path=self._prefix + target)
        base = self._base
        if url is None or (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise RuntimeError(f"refusing to forward {path!r} outside the upstream")  # B37
        return url

    def _request(
        self, scope: Scope, url: httpx.URL, content: bytes | AsyncIterator[bytes]
    ) -> httpx.Request:
        headers = [
            (name, value)
            for name, value in end_to_end(scope["headers"])
            if name not in _REPLACED_REQUEST_HEADERS
        ]
        if isinstance(content, bytes):
            # The length of what is forwarded, set by httpx; never a received Content-Length.
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        client = scope.get("client")
        if client:
            forwarded_for = [value for name, value in headers if name == b"x-forwarded-for"]
            headers = [(name, value) for name, value in headers if name != b"x-forwarded-for"]
            chain = b", ".join([*forwarded_for, client[0].encode("latin-1")])
            headers.append((b"x-forwarded-for", chain))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode("latin-1")))
        host = next((value for name, value in scope["headers"] if name == b"host"), None)
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        return self._client.build_request(scope["method"], url, headers=headers, content=content)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, query = raw_target(scope)
        refused = refusal(path, query, scope["headers"])
        if refused is not None:
            await _respond(send, refused)
            return
        url = self.upstream_url(path, query)
        first = await receive()
        if first["type"] != "http.request":
            return  # the client left before sending anything
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = _stream_body(first, receive)
        else:
            content = first.get("body", b"")
        try:
            response = await self._client.send(self._request(scope, url, content), stream=True)
        except _ClientGoneError:
            return
        except (httpx.HTTPError, httpx.StreamError) as error:
            await _respond(send, _failure(error))
            return
        try:
            await self._relay(response, send)
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        """Send the upstream's response: whole when it fits the buffer, else streamed."""
        chunks: list[bytes] = []
        size = 0
        stream = response.aiter_raw()  # raw: a compressed body stays compressed
        try:
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > self._buffer_size:
                    break
            else:
                body = b"".join(chunks)
                start = _start(response)
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return
        except (httpx.HTTPError, httpx.StreamError) as error:
            await _respond(send, _failure(error))
            return
        await send(_start(response))
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        try:
            async for chunk in stream:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (httpx.HTTPError, httpx.StreamError) as error:
            raise UpstreamBrokeError(f"the upstream broke its response: {error!r}") from error
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _start(response: httpx.Response) -> Message:
    return {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": end_to_end(response.headers.raw),
    }


def _failure(error: Exception) -> Response:
    """Return the 502 or 504 problem for an upstream exchange that failed (B37)."""
    reason = type(error).__name__
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return proxy_problem(
            502,
            "upstream-unreachable",
            "Upstream unreachable",
            f"The upstream service cannot be reached ({type(error).__name__}); the request "
            "was not forwarded. Retry later.",
        )
    if isinstance(error, httpx.TimeoutException):
        return proxy_problem(
            504,
            "upstream-timeout",
            "Upstream timed out",
            "The upstream service did not answer in time; it may have processed the request. "
            "Retry with the same Idempotency-Key.",
        )
    return proxy_problem(
        502,
        "upstream-failed",
        "Upstream failed",
        f"The upstream service broke the exchange ({reason}). Retry with the same Idempotency-Key.",
    )


async def _stream_body(first: Message, receive: Receive) -> AsyncIterator[bytes]:
    """Yield the request body as the client sends it."""
    yield first.get("body", b"")
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGoneError
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _respond(send: Send, response: Response) -> None:
    await send(
        {"type": "http.response.start", "status": response.status, "headers": response.headers}
    )
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
