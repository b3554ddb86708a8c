"""`ProxyApp`: forwards one HTTP request to the upstream with httpx and sends the answer back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final
from urllib.parse import quote

import anyio
import httpx

from retrysafe._errors import ConfigurationError
from retrysafe._http import MIB, Response
from retrysafe._http.asgi_io import run_lifespan
from retrysafe._urls import redact_message, redact_url
from retrysafe.asgi import OUTCOME_UNKNOWN, Message, Receive, Scope, Send, UnknownOutcome
from retrysafe.proxy._access import logged_target
from retrysafe.proxy._framing import (
    forwarded_headers,
    invalid_target,
    proxy_problem,
    refusal,
    request_target,
    websocket_refused,
)
from retrysafe.proxy._health import PROXY_LOGGER
from retrysafe.proxy._relay import Fetched, UpstreamBrokeError, relay
from retrysafe.proxy._upstream import upstream_client

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_TIMEOUT",
    "ProxyApp",
    "outcome_unknown",
    "raw_target",
    "respond",
]

DEFAULT_TIMEOUT: Final = 60.0
"""How long a client waits for the upstream's answer before a 504 (`--upstream-timeout`)."""
DEFAULT_DEADLINE: Final = 300.0
"""How long a claimed request's upstream call may run in all (`--upstream-deadline`)."""


class _ClientGoneError(Exception):
    """The client disconnected while its request body was being forwarded."""


def raw_target(scope: Scope) -> tuple[bytes, bytes]:
    """Return the request's path and query as the client sent them."""
    path: bytes = scope.get("raw_path") or quote(scope["path"]).encode()
    return path, scope.get("query_string", b"")


class ProxyApp:
    """An ASGI app that forwards each HTTP request to `upstream` and sends the answer back.

    A response up to `buffer_size` bytes is read whole before it is sent, so an upstream that
    breaks it gives a 502 problem; a larger one is streamed, and a break aborts the connection.
    A streamed response is given up when its client leaves, or takes none of it for
    `deadline` (behind the middleware, its key keeps the "response not stored" outcome); one
    given up for a break or a stall is said in a WARNING line on `retrysafe.proxy`, never a
    traceback.

    Behind the proxy's middleware, a request whose outcome becomes unknown (no answer within
    `timeout`, or an exchange broken after the request was sent) keeps its claim: the client
    gets a 504 or 502 at once, and the upstream call goes on up to `deadline` (B38).

    Args:
        upstream: the base URL of the service, `http://host:port` (a path prefix is kept; no
            user or password: httpx would send them in place of each client's credentials).
        client: the httpx client to forward with (default: one owned and closed by the app,
            which reuses a connection only when nothing follows the last answer on it).
        timeout: how long a client waits for the upstream's answer, in seconds (default 60).
        deadline: how long a claimed request's upstream call may run in all, and how long a
            streamed response may wait on the upstream or the client (default 300).
        buffer_size: the largest response read whole before sending (default 1 MiB).
        on_shutdown: coroutines to run at lifespan shutdown (closing the store, say).
    """

    def __init__(
        self,
        upstream: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        deadline: float = DEFAULT_DEADLINE,
        buffer_size: int = MIB,
        on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        shown = redact_url(upstream)  # its password is never printed
        try:
            url = httpx.URL(upstream)
        except httpx.InvalidURL as error:
            raise ConfigurationError(
                f"Invalid upstream URL {shown!r}: {redact_message(str(error), upstream)}"
            ) from error
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"The upstream is an http:// or https:// URL with a host, not {shown!r}."
            )
        if url.query or url.fragment:
            raise ConfigurationError(f"The upstream URL takes no query or fragment: {shown!r}.")
        if url.userinfo:
            raise ConfigurationError(
                f"The upstream URL takes no user or password: {shown!r}. They would be sent as "
                "Basic credentials with every forwarded request, in place of each client's own."
            )
        if not 0 < timeout <= deadline:
            raise ConfigurationError(
                f"The upstream timeout ({timeout:g} s) is above zero and at most the upstream "
                f"deadline ({deadline:g} s)."
            )
        self._timeout = timeout
        self._deadline = deadline
        self.upstream = upstream.rstrip("/")
        self._base = url
        self._prefix = url.raw_path.rstrip(b"/")
        self._buffer_size = buffer_size
        self._owns_client = client is None
        self._client = client or upstream_client(timeout, deadline)
        self._on_shutdown = list(on_shutdown)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward one HTTP request; run the lifespan; refuse WebSockets (not proxied)."""
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send, self.aclose)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)
        elif scope["type"] == "websocket":  # a server with a WebSocket library: refused too
            if "websocket.http.response" in scope.get("extensions", {}):
                await respond(send, websocket_refused(), prefix="websocket.http.response")
            else:
                await send({"type": "websocket.close", "code": 1003})

    async def aclose(self) -> None:
        """Close the httpx client (if the app made it) and run the shutdown callbacks."""
        if self._owns_client:
            await self._client.aclose()
        for callback in self._on_shutdown:
            await callback()

    def upstream_url(self, path: bytes, query: bytes = b"") -> httpx.URL:
        """Return the upstream URL for an origin-form target: always the upstream's authority,
        under its path prefix. Raises `httpx.InvalidURL` for a URL httpx cannot make (too
        long under a long path prefix)."""
        target = request_target(path, query)
        url = None if target is None else self._base.copy_with(raw_path=self._prefix + target)
        base = self._base
        if (
            url is None
            or (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port)
            or not url.raw_path.startswith(self._prefix + b"/")
        ):
            raise RuntimeError(f"refusing to forward {path!r} outside the upstream")  # B37
        return url

    def _request(
        self, scope: Scope, url: httpx.URL, content: bytes | AsyncIterator[bytes]
    ) -> httpx.Request:
        client = scope.get("client")
        headers = forwarded_headers(
            scope["headers"],
            client=client[0] if client else None,
            scheme=scope.get("scheme", "http"),
            whole=isinstance(content, bytes),
        )
        # Not `build_request`, which would add the client's default headers (`Accept-Encoding:
        # gzip`, `User-Agent`...) and its cookies: the upstream gets the client's headers only.
        timeout = self._client.timeout.as_dict()
        return httpx.Request(
            scope["method"], url, headers=headers, content=content, extensions={"timeout": timeout}
        )

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, query = raw_target(scope)
        refused = refusal(scope["method"], path, query, scope["headers"])
        if refused is not None:
            await respond(send, refused)
            return
        try:
            url = self.upstream_url(path, query)
        except httpx.InvalidURL:
            detail = "The request-target does not make a valid URL under the upstream's."
            await respond(send, invalid_target(detail))
            return
        first = await receive()
        if first["type"] != "http.request":
            return  # the client left before sending anything
        content: bytes | AsyncIterator[bytes]
        if first.get("more_body", False):
            content = _stream_body(first, receive)
        else:
            content = first.get("body", b"")
        request = self._request(scope, url, content)
        unknown: UnknownOutcome | None = (scope.get("extensions") or {}).get(OUTCOME_UNKNOWN)
        try:
            fetched = await self._fetch_in_time(request, unknown)
        except _ClientGoneError:
            return
        except (httpx.HTTPError, httpx.StreamError, TimeoutError) as error:
            if unknown is None or _not_sent(error):
                await respond(send, _failure(error))  # a 5xx: the claim is released (B18)
            else:  # the upstream may have acted: the claim is kept (B38)
                await unknown(_failure(error, kept=True), outcome_unknown(error))
            return
        if fetched is None:
            return  # past the deadline: the middleware stores `outcome-unknown` (B38)
        # The client is watched for leaving, unless it has its answer (a 504): this one is
        # only stored.
        watched = receive if unknown is None or not unknown.answered else None
        await self._relay(scope, fetched, send, watched)

    async def _relay(
        self,
        scope: Scope,
        fetched: Fetched,
        send: Send,
        receive: Receive | None,
    ) -> None:
        """Send the upstream's answer, giving a streamed one up if its client leaves
        (`receive`, unless None) or stalls; say why in a line, unless the client left. The
        line shows the target as the access log does (`logged_target`): no query, no password."""
        why = None
        try:
            ended = await relay(fetched, send, stall=self._deadline, receive=receive)
            if ended == "stalled":
                why = f"its client took none of it for {self._deadline:g} s"
        except UpstreamBrokeError as error:  # the server closes the connection: no traceback
            why = f"the upstream broke it ({error.__cause__!r})"
        finally:
            await fetched.response.aclose()
        if why is not None:
            PROXY_LOGGER.warning(
                "The streamed answer to %s %s was cut short: %s.",
                scope["method"],
                logged_target(scope),
                why,
            )

    async def _fetch_in_time(
        self, request: httpx.Request, unknown: UnknownOutcome | None
    ) -> Fetched | None:
        """Fetch the upstream's answer. The client waits `timeout` for it; then, if the
        middleware keeps the claim (`unknown`), it gets a 504 while the call goes on in the
        background up to `deadline`, and the answer is stored when it comes (B38)."""
        if unknown is None:  # nothing is claimed: a plain 504 after the timeout
            with anyio.fail_after(self._timeout):
                return await self._fetch(request)
        results: list[Fetched | BaseException] = []
        done = anyio.Event()

        async def fetch() -> None:
            try:
                results.append(await self._fetch(request))
            except (httpx.HTTPError, httpx.StreamError, _ClientGoneError) as error:
                results.append(error)
            finally:
                done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(fetch)
            with anyio.move_on_after(self._timeout):
                await done.wait()
            if not done.is_set():
                timeout = TimeoutError()
                await unknown(_failure(timeout, kept=True), outcome_unknown(timeout))
                with anyio.move_on_after(self._deadline - self._timeout):
                    await done.wait()
            if not done.is_set():
                group.cancel_scope.cancel()  # the deadline: give up on the upstream
                return None
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def _fetch(self, request: httpx.Request) -> Fetched:
        """Send the request; read the response's head and up to `buffer_size` of its body."""
        response = await self._client.send(request, stream=True)
        if not 100 <= response.status_code <= 599:  # h11 takes any three digits
            # Invalid HTTP, as a garbage status line is: the upstream got the request (B38).
            await response.aclose()
            raise httpx.RemoteProtocolError(
                f"invalid status code {response.status_code}", request=request
            )
        try:
            chunks: list[bytes] = []
            size = 0
            stream = response.aiter_raw()  # raw: a compressed body stays compressed
            async for chunk in stream:
                chunks.append(chunk)
                size += len(chunk)
                if size > self._buffer_size:
                    return Fetched(response, chunks, stream)
            return Fetched(response, chunks, None)
        except BaseException:
            await response.aclose()
            raise


def _not_sent(error: BaseException) -> bool:
    """Whether the upstream surely did not get the request: no connection was made (B38)."""
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _failure(error: BaseException, *, kept: bool = False) -> Response:
    """Return the 502 or 504 problem for an upstream exchange that failed (B37), saying
    whether the request's claim is `kept` because the upstream may have acted (B38)."""
    if _not_sent(error):
        return proxy_problem(
            "upstream-unreachable",
            f"The upstream service cannot be reached ({type(error).__name__}); the request "
            "was not forwarded. Retry later.",
        )
    timed_out = isinstance(error, httpx.TimeoutException | TimeoutError)
    if not kept:
        then = "It may have processed the request."
    elif timed_out:
        then = (
            "A retry with the same Idempotency-Key is not forwarded again: it gets the "
            "upstream's answer once it comes."
        )
    else:
        then = (
            "It may have processed the request, so a retry with the same Idempotency-Key is "
            "not forwarded again (it gets the outcome-unknown problem)."
        )
    if timed_out:
        return proxy_problem(
            "upstream-timeout",
            f"The upstream service did not answer in time and may still be working. {then}",
        )
    return proxy_problem(
        "upstream-failed",
        f"The upstream service broke the exchange ({type(error).__name__}) after it was sent "
        f"the request. {then}",
    )


def outcome_unknown(error: BaseException) -> Response:
    """Return the problem stored for a request whose outcome the proxy cannot know (B38)."""
    why = (
        "did not answer by the proxy's deadline"
        if isinstance(error, httpx.TimeoutException | TimeoutError)
        else f"broke the exchange ({type(error).__name__}) after it was sent the request"
    )
    return proxy_problem(
        "outcome-unknown",
        f"The upstream service {why}; it may have processed the request. The proxy will not "
        "forward it again under this Idempotency-Key: check the outcome, then use a new key "
        "(or have an operator run `retrysafe keys delete`).",
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


async def respond(send: Send, response: Response, *, prefix: str = "http.response") -> None:
    """Send `response` whole (as a WebSocket's denial with `prefix="websocket.http.response"`)."""
    await send({"type": f"{prefix}.start", "status": response.status, "headers": response.headers})
    await send({"type": f"{prefix}.body", "body": response.body, "more_body": False})
