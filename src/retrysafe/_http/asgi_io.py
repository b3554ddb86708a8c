"""The ASGI plumbing of the middleware and transactional mode: types, key and body, response.

The twin of `wsgi_io`; both feed the sans-I/O core (`settings`, `problems`, `outcome`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

from retrysafe._http.flow import new_identity, unresolved
from retrysafe._http.problems import Response, check_content_length, read_key, too_large
from retrysafe._http.routing import RoutePath
from retrysafe._http.scope import NoCaller, ScopeError, Scoper, principal_of
from retrysafe._http.settings import RequestView, Settings
from retrysafe._record import Identity

__all__ = [
    "ASGIApp",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TrackedRequest",
    "read_body",
    "replay_body",
    "request_view",
    "respond",
    "route_path",
    "run_lifespan",
    "track_request",
]

# The ASGI types, as starlette.types spells them: messages are dicts of any values.
Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]


TrackedRequest: TypeAlias = tuple[Identity, str, bytes]
"""A keyed request ready to claim: its identity, its fingerprint and its whole body."""


async def track_request(
    scope: Scope,
    receive: Receive,
    send: Send,
    settings: Settings,
    values: list[bytes],
    *,
    scoper: Scoper,
    principal: Callable[[Scope], Awaitable[object]] | None = None,
) -> TrackedRequest | None:
    """Parse the key and read the body of a covered request; None once it has been answered.

    A malformed key (400), a body over the limit (413) or a request with no scope (400) is
    answered here, before any storage is touched (B3, B8, B9, B22), and so is a request whose
    caller cannot be named (500, `unresolved`); a client that goes away before sending its
    body gets nothing. `principal`, where given, names the request's user
    (B8) once its key and body are read, unless an authentication middleware named one.
    """
    key = read_key(values, settings)
    if isinstance(key, Response):
        await respond(send, key)
        return None
    body = await read_body(scope, receive, settings)
    if body is None:  # the client went away before sending its body
        return None
    if isinstance(body, Response):
        await respond(send, body)
        return None
    user = scope.get("user")  # an authentication middleware's, else `principal`'s (B8)
    try:
        if principal is not None and principal_of(user) is None:
            user = await principal(scope)  # once the request is sound
        request = request_view(scope, user)
    except (NoCaller, ScopeError) as error:  # no stable name, or the principal unresolved
        await respond(send, unresolved(settings, error))
        return None
    identity = new_identity(settings, request, key, scoper)
    if isinstance(identity, Response):
        await respond(send, identity)
        return None
    return identity, settings.fingerprint_of(request, body), body


def route_path(scope: Scope) -> RoutePath:
    """Return the path the app routes: `path` without the mount prefix `root_path`, where it
    starts with it at a segment's end (servers and Starlette's `Mount` keep the prefix in
    `path`), as Starlette's routing does; its `whole` is `path`."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return RoutePath(path[len(root) :] or "/", path)
    return RoutePath(path, path)


def request_view(scope: Scope, user: object) -> RequestView:
    """Return the request as the sans-I/O core sees it, its principal `user`'s (B8)."""
    return RequestView(
        method=scope["method"],
        path=scope["path"],
        query_string=scope.get("query_string", b""),
        headers=scope["headers"],
        raw=scope,
        principal=None if user is None else principal_of(user),
        raw_path=scope.get("raw_path"),
    )


async def read_body(scope: Scope, receive: Receive, settings: Settings) -> bytes | Response | None:
    """Return the whole request body, the 413 problem, or None if the client disconnected."""
    length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
    rejected = check_content_length(length, settings)
    if rejected is not None:
        return rejected
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > settings.max_body_size:
            return too_large(settings)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """Return a `receive` that gives the app the buffered body, then the real messages."""
    sent = False

    async def receive_body() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_body


async def respond(send: Send, response: Response) -> None:
    """Send a whole response: status, headers and body in two messages.

    The headers go out as a list of their own, as apps send them: middleware outside this
    one may edit the list in place (Starlette's `GZipMiddleware` appends `Vary`)."""
    headers = list(response.headers)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})


async def run_lifespan(
    receive: Receive, send: Send, shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Answer an ASGI lifespan: start at once; at shutdown, await `shutdown()` first."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
