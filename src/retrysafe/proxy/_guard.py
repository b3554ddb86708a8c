"""`RequestGuard`: what the proxy refuses before anything else runs (B36, B37).

It sits outside the idempotency middleware, so a refused request never touches the store:

- a request-target that is not origin-form, a CONNECT, `Transfer-Encoding` beside
  `Content-Length`, or a `Connection` header naming `Idempotency-Key` gets 400, a
  request-target over 8 KiB 414, and a method not in upper case or a WebSocket upgrade 501
  (B37), with `Connection: close` if the request announced a body, which is not read;
- a request body larger than `max_body_size`, announced or streamed, gets 413;
- a request body that has not fully arrived `body_timeout` seconds after the request's head
  (a slowloris client trickling bytes) gets 408 and its connection is closed.

The last two apply to every request, keyed or not, since every body is forwarded. The app
behind sees a body cut short as the client leaving (`http.disconnect`), so nothing is claimed
and nothing half-sent reaches the upstream as a whole request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

import anyio

from retrysafe._errors import ConfigurationError
from retrysafe._http import MIB, Response
from retrysafe.asgi import ASGIApp, Message, Receive, Scope, Send
from retrysafe.proxy._forward import raw_target, respond
from retrysafe.proxy._framing import proxy_problem, refusal

__all__ = ["DEFAULT_BODY_TIMEOUT", "RequestGuard"]

DEFAULT_BODY_TIMEOUT: Final = 30.0
"""How long a request's body may take to arrive, in seconds (`--body-timeout`)."""
_DISCONNECT: Final = {"type": "http.disconnect"}


class RequestGuard:
    """ASGI: refuse a request the proxy would not forward, before anything else runs.

    Args:
        app: the middleware and proxy behind.
        max_body_size: the largest request body forwarded, in bytes.
        body_timeout: how long the whole body may take to arrive, in seconds; None: no bound.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_size: int = MIB,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    ) -> None:
        if body_timeout is not None and not body_timeout > 0:
            raise ConfigurationError(f"The body timeout is above zero, not {body_timeout:g} s.")
        self.app = app
        self.max_body_size = max_body_size
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, unless its target, framing, size or pace is refused."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = refusal(scope["method"], *raw_target(scope), scope["headers"])
        if refused is None:
            refused = self._announced_too_large(scope)
        if refused is not None:
            await respond(send, _closing(refused) if _announces_body(scope) else refused)
            return
        body = _BoundedBody(receive, self.max_body_size, self.body_timeout)
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, body.receive, watched_send)
        if body.refused is not None and not started:
            await respond(send, body.refused)

    def _announced_too_large(self, scope: Scope) -> Response | None:
        for name, value in scope["headers"]:
            too_large = value.isdigit() and int(value) > self.max_body_size
            if too_large and name.lower() == b"content-length":
                return _too_large(self.max_body_size)
        return None


class _BoundedBody:
    """A `receive` that ends the body with `http.disconnect` once it is too large or late,
    and names the problem to answer with (413 or 408)."""

    __slots__ = ("_deadline", "_limit", "_receive", "_size", "complete", "refused")

    def __init__(self, receive: Receive, limit: int, timeout: float | None) -> None:
        self._receive = receive
        self._limit = limit
        self._deadline = None if timeout is None else anyio.current_time() + timeout
        self._size = 0
        self.complete = False
        self.refused: Response | None = None

    async def receive(self) -> Message:
        if self.complete:
            return await self._receive()  # past the body: a disconnect, whenever it comes
        if self.refused is not None:
            return _DISCONNECT
        if self._deadline is None:
            message = await self._receive()
        else:
            with anyio.move_on_after(self._deadline - anyio.current_time()):
                message = await self._receive()
                return self._count(message)
            self.refused = _late()
            return _DISCONNECT
        return self._count(message)

    def _count(self, message: Message) -> Message:
        if message["type"] != "http.request":
            return message
        self._size += len(message.get("body", b""))
        if self._size > self._limit:
            self.refused = _too_large(self._limit)
            return _DISCONNECT
        self.complete = not message.get("more_body", False)
        return message


def _announces_body(scope: Scope) -> bool:
    """Whether the request says a body follows its head (a Content-Length above 0, or a
    Transfer-Encoding)."""
    for name, value in scope["headers"]:
        lower = name.lower()
        if lower == b"transfer-encoding" or (lower == b"content-length" and value != b"0"):
            return True
    return False


def _closing(response: Response) -> Response:
    """Return `response` with `Connection: close`: the request's body, refused unread, is not
    read to its end, so the connection cannot carry another request (B36)."""
    if any(name == b"connection" for name, _ in response.headers):
        return response
    return replace(response, headers=(*response.headers, (b"connection", b"close")))


def _too_large(limit: int) -> Response:
    return proxy_problem(
        "body-too-large",
        f"The proxy forwards request bodies of at most {limit} bytes.",
        close=True,
    )


def _late() -> Response:
    return proxy_problem(
        "body-timeout",
        "The request body did not arrive in time; nothing was forwarded or stored.",
        close=True,
    )
