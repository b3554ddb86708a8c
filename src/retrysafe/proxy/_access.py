"""`AccessLog`: one log line for each request the proxy answers, with its idempotency decision.

    127.0.0.1 POST /payments 201 execute 12.4 ms

The line is logged at INFO on `retrysafe.proxy.access` once the response is complete (or the
request ended without one), with the fields as `extra` too (`client`, `method`, `path`,
`status`, `decision`, `duration_ms`) for a JSON formatter. The decision is the one the middleware
reported to its observers (`retrysafe.observe.DECISIONS`), or `-` for a request it did not track
(no key, a method it does not cover, or refused by the proxy's own checks before it).

`AccessLog` sits outermost and puts a holder for the decision in a context variable; `Decisions`,
an observer given to the middleware, fills it in. Both run in the request's task, so no request
sees another's decision.
"""

from __future__ import annotations

import logging
import re
import time
from contextvars import ContextVar
from typing import Final

from retrysafe.asgi import ASGIApp, Message, Receive, Scope, Send
from retrysafe.observe import Observer, Operation
from retrysafe.observe._text import printable

__all__ = ["ACCESS_LOGGER", "AccessLog", "Decisions", "printable"]

ACCESS_LOGGER: Final = logging.getLogger("retrysafe.proxy.access")
LOGGED_PATH: Final = 1024
"""How much of a path the access log writes (`clipped`)."""
_AUTHORITY: Final = re.compile(
    r"(?P<start>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?(?P<authority>[^/]*)(?P<rest>.*)", re.DOTALL
)
"""A request-target that is not origin-form: `scheme://`, its authority, then the rest."""


class _Seen:
    """What the access log learns about its request from the middleware's observers."""

    __slots__ = ("decision",)

    def __init__(self) -> None:
        self.decision: str | None = None


_SEEN: ContextVar[_Seen | None] = ContextVar("retrysafe_proxy_access", default=None)


class Decisions(Observer):
    """The observer that tells `AccessLog` the decision of the request it is logging."""

    def decided(self, operation: Operation) -> None:
        """Record the decision for the request in progress, if it is being logged."""
        seen = _SEEN.get()
        if seen is not None:
            seen.decision = operation.decision


class AccessLog:
    """ASGI: log one line per HTTP request, once its response is complete.

    Give the middleware behind a `Decisions` observer, or every decision is `-`.

    Args:
        app: the proxy (`RequestGuard`, the middleware and `ProxyApp`).
        logger: where the lines go (default `retrysafe.proxy.access`, at INFO).
    """

    def __init__(self, app: ASGIApp, *, logger: logging.Logger = ACCESS_LOGGER) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; log it when its response is complete or the request ends."""
        if scope["type"] != "http" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        seen = _Seen()
        status: int | None = None
        logged = False

        async def logged_send(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and not logged:
                logged = True
                self._log(scope, status, seen, began)

        token = _SEEN.set(seen)
        try:
            await self.app(scope, receive, logged_send)
        except Exception:
            if not logged:  # the server answers 500 if nothing was sent yet
                logged = True
                self._log(scope, 500 if status is None else status, seen, began)
            raise
        finally:
            _SEEN.reset(token)
            if not logged:  # the client left, or the app ended without an answer
                self._log(scope, status, seen, began)

    def _log(self, scope: Scope, status: int | None, seen: _Seen, began: float) -> None:
        milliseconds = round((time.perf_counter() - began) * 1000, 1)
        client = scope.get("client")
        fields = {
            "client": printable(client[0]) if client else "-",
            "method": printable(scope["method"]),
            "path": clipped(printable(_path(scope))),
            "status": "-" if status is None else str(status),
            "decision": seen.decision or "-",
            "duration_ms": milliseconds,
        }
        self.logger.info("%s %s %s %s %s %.1f ms", *fields.values(), extra=fields)


def _path(scope: Scope) -> str:
    """Return the path as the client sent it (percent-encoding kept), without the query,
    which may carry secrets, and without the user and password of a target that may name an
    authority (`http://user:password@host/x`, or `//user:password@host/x`): `***@host`."""
    raw: bytes | None = scope.get("raw_path")
    path: str = scope["path"] if raw is None else raw.decode("utf-8", "backslashreplace")
    if path.startswith("/") and not path.startswith("//"):
        return path  # origin-form: no authority
    parts = _AUTHORITY.match(path)
    if parts is None:  # never: every part is optional
        return path
    authority = parts["authority"]
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{parts['start'] or ''}{authority}{parts['rest']}"


def clipped(text: str) -> str:
    """Return `text` cut at `LOGGED_PATH` characters, saying how many more there were: a
    client's long target (up to the 16 KiB head, refused with 414) makes no long log line."""
    if len(text) <= LOGGED_PATH:
        return text
    return f"{text[:LOGGED_PATH]}...[{len(text) - LOGGED_PATH} more characters]"
