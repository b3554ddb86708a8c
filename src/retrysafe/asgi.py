"""Idempotency-Key middleware for ASGI apps (Starlette, FastAPI, Litestar, any ASGI app).

    from retrysafe import open_async_store
    from retrysafe.asgi import IdempotencyMiddleware, RouteSettings

    app = IdempotencyMiddleware(
        app,
        store=open_async_store("sqlite:///idempotency.db"),
        routes={"/payments": RouteSettings(required=True), "/health": None},
    )

Pure ASGI: the instance holds only configuration; each request's state lives in the locals of
`__call__`. The decisions come from `retrysafe._http`, shared with `retrysafe.wsgi`. See
docs/http.md for every setting and the published policy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, Unpack

from retrysafe._errors import StoreError
from retrysafe._flow import AsyncFlow, Counters
from retrysafe._http import (
    KEY_HEADER,
    Gate,
    ResponseCapture,
    RouteSettings,
    ScopeLimiter,
    Settings,
    SettingsOptions,
    answer,
    logger,
    outcome_to_store,
    store_unavailable,
    too_many_in_flight,
)
from retrysafe._http.asgi_io import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    replay_body,
    respond,
    track_request,
)
from retrysafe._record import Identity
from retrysafe.stores.base import AsyncStore

__all__ = [
    "ASGIApp",
    "IdempotencyMiddleware",
    "Message",
    "Receive",
    "RouteSettings",
    "Scope",
    "Send",
    "Settings",
]


# Response extensions the capture cannot see through: the app must send plain body messages.
_UNCAPTURABLE: Final = (
    "http.response.pathsend",
    "http.response.zerocopy",
    "http.response.trailers",
)


def _path(scope: Scope) -> str:
    path: str = scope["path"]
    return path


class IdempotencyMiddleware:
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args:
        app: the ASGI app to wrap.
        store: where records live (`retrysafe.open_async_store(url)`).
        routes: path pattern to `RouteSettings` (or None: not covered), first match wins;
            `*` matches within one path segment, `**` anything. Unlisted paths use `settings`.
        route_settings: instead of `routes`, a function of the ASGI scope returning the
            `RouteSettings` of the request, or None if it is not covered (for framework
            integrations that know their routes). It is called for requests whose method is
            in `methods`; for those without a key only if the hook has no `may_require_key`
            attribute or it is true (no route requires a key: they pass straight through).
        settings: a `Settings` to start from; `options` override its fields.
        options: any `Settings` field by name (`required=True`, `wait=0`, ...).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: AsyncStore,
        routes: Mapping[str, RouteSettings | None] | None = None,
        route_settings: Callable[[Scope], RouteSettings | None] | None = None,
        settings: Settings | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        self.app = app
        self.store = store
        self._gate = Gate(settings, routes, route_settings, _path, **options)
        self.settings = self._gate.settings
        self.counters = Counters()
        """What the middleware did: executions, replays, and failures to store (B19)."""
        self.flow = AsyncFlow(store, counters=self.counters, logger=logger)
        self._methods = self._gate.methods
        cap = self.settings.max_in_flight_per_scope
        self._limiter = None if cap is None else ScopeLimiter(cap)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; all but covered HTTP requests pass straight through."""
        if scope["type"] != "http" or scope["method"] not in self._methods:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == KEY_HEADER]
        settings = self._gate.settings_for(scope, scope["method"], bool(values))
        if settings is None:
            await self.app(scope, receive, send)
            return
        await self._track(scope, receive, send, settings, values)

    async def _track(
        self, scope: Scope, receive: Receive, send: Send, settings: Settings, values: list[bytes]
    ) -> None:
        tracked = await track_request(scope, receive, send, settings, values)
        if tracked is None:
            return
        identity, fingerprint, body = tracked
        try:
            admitted = await self.flow.admit(
                identity,
                fingerprint,
                lease=settings.lease,
                retention=settings.retention,
                wait=settings.wait,
            )
        except StoreError:
            logger.exception("The idempotency store failed; fail_open=%s", settings.fail_open)
            if settings.fail_open:
                await self.app(scope, replay_body(body, receive), send)
            else:
                await respond(send, store_unavailable(settings))
            return
        refused = answer(admitted, settings)
        if refused is not None:
            await respond(send, refused)
            return
        if self._limiter is not None and not self._limiter.enter(identity.scope):
            await self.flow.release(identity, admitted.token)
            await respond(send, too_many_in_flight(settings))
            return
        try:
            await self._execute(
                scope,
                receive,
                send,
                settings=settings,
                identity=identity,
                token=admitted.token,
                body=body,
            )
        finally:
            if self._limiter is not None:
                self._limiter.leave(identity.scope)

    async def _execute(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        identity: Identity,
        token: str,
        body: bytes,
    ) -> None:
        """Run the app under the claim, then store or release its outcome and answer."""
        capture = ResponseCapture(settings.max_response_size)
        start: Message = {}

        async def capture_send(message: Message) -> None:
            nonlocal start
            kind = message["type"]
            if kind == "http.response.start":
                start = message
                capture.start(message["status"], message.get("headers", ()))
            elif kind == "http.response.body":
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                capture.complete = not more
                if capture.overflowed:
                    await send(message)
                elif capture.add(chunk):  # past the storable limit: stream from here on
                    await send(start)
                    await send({"type": kind, "body": capture.take(), "more_body": more})
            else:
                await send(message)

        app_scope = scope
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _UNCAPTURABLE):
            kept = {k: v for k, v in extensions.items() if k not in _UNCAPTURABLE}
            app_scope = {**scope, "extensions": kept}
        # An exception or a cancellation leaves the block unfinished: the claim is released,
        # so a retry runs again (B18).
        async with self.flow.execution(
            identity, token, lease=settings.lease, retention=settings.retention
        ) as execution:
            await self.app(app_scope, replay_body(body, receive), capture_send)
            await execution.finish(outcome_to_store(capture, settings))
        if not capture.overflowed and start:
            await send(start)
            await send({"type": "http.response.body", "body": capture.body(), "more_body": False})
