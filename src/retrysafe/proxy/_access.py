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

__all__ = ["ACCESS_LOGGER", "AccessLog", "Decisions", "logged_target", "printable"]

ACCESS_LOGGER: Final = logging.getLogger("retrysafe.proxy.access")
LOGGED_PATH: Final = 1024
"""How much of a path the access log writes (`clipped`)."""
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
"""The start of an absolute-form target, `http://`: kept in the log."""
_HOST_END: Final = re.compile(r"[/?#\\]")
"""What ends the host of a target that names one."""


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
            "path": logged_target(scope),
            "status": "-" if status is None else str(status),
            "decision": seen.decision or "-",
            "duration_ms": milliseconds,
        }
        self.logger.info("%s %s %s %s %s %.1f ms", *fields.values(), extra=fields)


def logged_target(scope: Scope) -> str:
    """Return the request's target as the proxy's lines show it (the access log's and the
    cut-short warning's): the path as the client sent it, percent-encoding kept, printable and
    `clipped`; never the query, which may carry secrets, nor a user or password, however
    spelled (`_masked`)."""
    raw: bytes | None = scope.get("raw_path")
    path: str = scope["path"] if raw is None else raw.decode("utf-8", "backslashreplace")
    return clipped(printable(_masked(path, b"@" in scope.get("query_string", b""))))


def _masked(path: str, at_in_query: bool) -> str:
    """Return `path` (its query had an `@`: `at_in_query`) without what could be userinfo.

    An origin-form path is kept whole. One that may name an authority (`//user:pw@host/x`,
    forwarded as a path) loses all before its last `@`: `//***@host/x`. Any other target,
    refused (`http://user:pw@host/x`), keeps only its scheme and host: `http://***@host`. A
    password may hold a `/` or a `?`, which split the target (uvicorn's `raw_path` ends at the
    first `?`), so an `@` in the query masks all but the scheme: `http://***`, `//***`."""
    if path.startswith("/") and path[1:2] not in ("/", "\\"):
        return path  # origin-form: no authority
    scheme = _SCHEME.match(path)
    start = path[:2] if path.startswith("/") else scheme[0] if scheme else ""
    if at_in_query:
        return f"{start}***"
    rest = path[len(start) :]
    masked = "@" in rest
    if masked:
        rest = rest.rpartition("@")[2]
    if not path.startswith("/"):
        rest = _HOST_END.split(rest, 1)[0]
    return f"{start}{'***@' if masked else ''}{rest}"


def clipped(text: str) -> str:
    """Return `text` cut at `LOGGED_PATH` characters, saying how many more there were: a
    client's long target (up to the 16 KiB head, refused with 414) makes no long log line."""
    if len(text) <= LOGGED_PATH:
        return text
    return f"{text[:LOGGED_PATH]}...[{len(text) - LOGGED_PATH} more characters]"
