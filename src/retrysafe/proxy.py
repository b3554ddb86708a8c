"""A reverse proxy that gives any HTTP service Idempotency-Key semantics.

    from retrysafe import open_async_store
    from retrysafe.proxy import build_proxy

    app = build_proxy("http://127.0.0.1:3000", store=open_async_store("redis://..."), wait=0)

`ProxyApp` forwards every request to the upstream with httpx, streaming both bodies;
`build_proxy` wraps it in `retrysafe.asgi.IdempotencyMiddleware`, so a retried POST or PATCH
with the same key reaches the upstream once. `retrysafe proxy` serves it with uvicorn.

Forwarding follows RFC 9110 section 7.6: hop-by-hop headers (Connection, Keep-Alive,
Transfer-Encoding, Upgrade, TE, Trailer, Proxy-*, and any header the Connection header names)
are dropped both ways; `Host` is the upstream's; `X-Forwarded-For` gets the client's address
appended, `X-Forwarded-Proto` and `X-Forwarded-Host` say what the client asked for. An upstream
that cannot be reached gives 502 problem+json, one that does not answer in time 504.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Unpack
from urllib.parse import urlsplit

from retrysafe._extras import missing_extra

try:
    import httpx
except ImportError as error:
    raise missing_extra("retrysafe.proxy", "cli", error) from error

from retrysafe._errors import ConfigurationError
from retrysafe._http import DEFAULT_PROBLEM_BASE_URL, Header, SettingsOptions
from retrysafe.asgi import ASGIApp, IdempotencyMiddleware, Message, Receive, Scope, Send
from retrysafe.stores.base import AsyncStore

__all__ = ["HOP_BY_HOP_HEADERS", "ProxyApp", "build_proxy"]

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
# Set by the proxy itself, whatever the client sent (X-Forwarded-For is appended to instead).
_REPLACED_REQUEST_HEADERS: Final = frozenset({b"host", b"x-forwarded-proto", b"x-forwarded-host"})
_PROBLEM_BASE_URL: Final = DEFAULT_PROBLEM_BASE_URL.replace("/http/", "/proxy/")
_DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being forwarded."""


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


def _problem(status: int, slug: str, title: str, detail: str) -> tuple[int, list[Header], bytes]:
    body = json.dumps(
        {"type": _PROBLEM_BASE_URL + slug, "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    return status, headers, body


class ProxyApp:
    """An ASGI app that forwards each HTTP request to `upstream` and streams the answer back.

    Args:
        upstream: the base URL of the service, `http://host:port` (a path prefix is kept).
        client: the httpx client to forward with (default: one owned and closed by the app).
        timeout: the httpx timeout for upstream requests (default: 5 s to connect, 60 s else).
        on_shutdown: coroutines to run at lifespan shutdown (closing the store, say).
    """

    def __init__(
        self,
        upstream: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = None,
        on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(
                f"The upstream is an http:// or https:// URL with a host, not {upstream!r}."
            )
        if parts.query or parts.fragment:
            raise ConfigurationError(f"The upstream URL takes no query or fragment: {upstream!r}.")
        self.upstream = upstream.rstrip("/")
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
            await self._lifespan(receive, send)
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

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _request(self, scope: Scope, content: bytes | AsyncIterator[bytes]) -> httpx.Request:
        path = scope.get("raw_path") or scope["path"].encode()
        target = path.decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name, value)
            for name, value in end_to_end(scope["headers"])
            if name not in _REPLACED_REQUEST_HEADERS
        ]
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
        return self._client.build_request(
            scope["method"], self.upstream + target, headers=headers, content=content
        )

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        first = await receive()
        if first["type"] != "http.request":
            return  # the client left before sending anything
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = _stream_body(first, receive)
        else:
            content = first.get("body", b"")
        request = self._request(scope, content)
        try:
            response = await self._client.send(request, stream=True)
        except _ClientGoneError:
            return
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            await _respond(
                send,
                *_problem(
                    502,
                    "upstream-unreachable",
                    "Upstream unreachable",
                    f"The upstream service cannot be reached ({type(error).__name__}); the "
                    "request was not forwarded. Retry later.",
                ),
            )
            return
        except httpx.TimeoutException:
            await _respond(
                send,
                *_problem(
                    504,
                    "upstream-timeout",
                    "Upstream timed out",
                    "The upstream service did not answer in time; it may have processed the "
                    "request. Retry with the same Idempotency-Key.",
                ),
            )
            return
        except httpx.HTTPError as error:
            await _respond(
                send,
                *_problem(
                    502,
                    "upstream-failed",
                    "Upstream failed",
                    f"The upstream service broke the exchange ({type(error).__name__}). Retry "
                    "with the same Idempotency-Key.",
                ),
            )
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": end_to_end(response.headers.raw),
                }
            )
            # Raw bytes: a compressed body stays compressed, and Content-Length stays true.
            async for chunk in response.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


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


async def _respond(send: Send, status: int, headers: list[Header], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def build_proxy(
    upstream: str,
    *,
    store: AsyncStore,
    client: httpx.AsyncClient | None = None,
    timeout: httpx.Timeout | float | None = None,
    **options: Unpack[SettingsOptions],
) -> ASGIApp:
    """Return the idempotent reverse proxy to `upstream`: `ProxyApp` behind the middleware.

    The store is closed at lifespan shutdown.

    Args:
        upstream: the base URL of the service.
        store: where records live (`retrysafe.open_async_store(url)`).
        client: the httpx client to forward with (default: one the proxy owns).
        timeout: the upstream timeout (default: 5 s to connect, 60 s else).
        options: the middleware's settings (`required=True`, `wait=0`, `scope_header=...`).
    """
    proxy = ProxyApp(upstream, client=client, timeout=timeout, on_shutdown=[store.aclose])
    return IdempotencyMiddleware(proxy, store=store, **options)
