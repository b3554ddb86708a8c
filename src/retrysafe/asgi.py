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

from typing import Final

from retrysafe._errors import StoreError
from retrysafe._flow import Admission, AsyncFlow
from retrysafe._flow.secret import aload_secret
from retrysafe._http import (
    KEY_HEADER,
    ResponseCapture,
    RouteSettings,
    Settings,
    logger,
    outcome_to_store,
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
from retrysafe._http.middleware import MiddlewareBase
from retrysafe._http.scope import Scoper
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


class IdempotencyMiddleware(MiddlewareBase[ASGIApp, Scope, AsyncStore, AsyncFlow]):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args: see `retrysafe._http.middleware.MiddlewareBase`; `app` is an ASGI app, `store` an
    async store (`retrysafe.open_async_store(url)`), and `route_settings` gets the ASGI scope.
    """

    @staticmethod
    def _path(request: Scope) -> str:
        path: str = request["path"]
        return path

    @staticmethod
    def _new_flow(store: AsyncStore) -> AsyncFlow:
        return AsyncFlow(store, logger=logger)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; all but covered HTTP requests pass straight through."""
        if scope["type"] == "lifespan":  # at shutdown, store held outcomes first (B19, B40)
            await self.app(scope, self.flow.draining(receive), send)
            return
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
        tracked = None
        try:
            scoper = self._scoper or await self._load_scoper()
            tracked = await track_request(scope, receive, send, settings, values, scoper=scoper)
            if tracked is None:
                return
            identity, fingerprint, body = tracked
            admitted = await self.flow.admit(identity, fingerprint, settings)
        except StoreError:
            unavailable = self._store_failed(settings)
            if unavailable is None:
                await self.app(scope, replay_body(body, receive) if tracked else receive, send)
            else:
                await respond(send, unavailable)
            return
        refused = self._refusal(admitted, identity.scope, settings)
        if refused is not None:
            if admitted.claim is not None:  # over the scope's cap: let a retry run it
                await self.flow.release(identity, admitted.token)
            await respond(send, refused)
            return
        try:
            await self._execute(
                scope, receive, send, settings=settings, admitted=admitted, body=body
            )
        finally:
            self._leave(identity.scope)

    async def _load_scoper(self) -> Scoper:
        """Load the scope secret kept in the store (B8), once."""
        self._scoper = Scoper(await aload_secret(AsyncFlow(self.store)))
        return self._scoper

    async def _execute(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        admitted: Admission,
        body: bytes,
    ) -> None:
        """Run the app under the claim; store its outcome and answer as soon as the app sent
        its last body message (B18). What the app does after that (background tasks) neither
        delays the answer nor changes the stored outcome; an exception there is logged."""
        capture = ResponseCapture(settings.max_response_size)
        start: Message = {}
        execution = self.flow.execution(admitted, settings)
        identity = execution.identity

        async def capture_send(message: Message) -> None:
            nonlocal start
            kind = message["type"]
            if kind == "http.response.start":
                start = message
                capture.start(message["status"], message.get("headers", ()))
            elif kind == "http.response.body":
                if capture.complete:
                    return  # the response is over; nothing more reaches the client
                chunk = message.get("body", b"")
                more = message.get("more_body", False)
                capture.complete = not more
                if capture.overflowed:
                    await send(message)
                elif capture.add(chunk):  # past the storable limit: stream from here on
                    await send(start)
                    await send({"type": kind, "body": capture.take(), "more_body": more})
                if capture.complete:  # the outcome: store it, then answer at once
                    await execution.finish(outcome_to_store(capture, settings))
                    if not capture.overflowed:
                        await _send_whole(send, start, capture.body())
            else:
                await send(message)

        app_scope = scope
        extensions = scope.get("extensions")
        if extensions and any(name in extensions for name in _UNCAPTURABLE):
            kept = {k: v for k, v in extensions.items() if k not in _UNCAPTURABLE}
            app_scope = {**scope, "extensions": kept}
        # An exception or a cancellation before the last body message leaves the execution
        # unfinished: the claim is released, so a retry runs again (B18).
        async with execution:
            try:
                await self.app(app_scope, replay_body(body, receive), capture_send)
            except Exception:
                if not capture.complete:
                    raise
                logger.exception(
                    "The app raised after its response to %s was complete (a background task?); "
                    "the response stands",
                    identity,
                )
                return
            if capture.complete:
                return
            await execution.finish(None)  # the app returned without finishing its response
        if not capture.overflowed and start:
            await _send_whole(send, start, capture.body())


async def _send_whole(send: Send, start: Message, body: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
