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
docs/http.md for every setting and the published policy. What configures it (`Settings`,
`RouteSettings`, `SettingsOptions`, `KeyPolicy`, `RequestView`) and what it hands back
(`Counters`, `Observation`) are exported here and from `retrysafe`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import anyio

from retrysafe._errors import StoreError
from retrysafe._flow import Admission, AsyncExecution, AsyncFlow
from retrysafe._flow.counters import Counters
from retrysafe._flow.observing import Observation
from retrysafe._flow.secret import aload_secret
from retrysafe._http import (
    KEY_HEADER,
    RequestView,
    Response,
    ResponseCapture,
    RouteSettings,
    Settings,
    SettingsOptions,
    encode_outcome,
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
    route_path,
    track_request,
)
from retrysafe._http.middleware import MiddlewareBase
from retrysafe._http.scope import Scoper
from retrysafe._keys import KeyPolicy
from retrysafe.stores.base import AsyncStore

__all__ = [
    "OUTCOME_UNKNOWN",
    "ASGIApp",
    "Counters",
    "IdempotencyMiddleware",
    "KeyPolicy",
    "Message",
    "Observation",
    "Receive",
    "RequestView",
    "RouteSettings",
    "Scope",
    "Send",
    "Settings",
    "SettingsOptions",
    "UnknownOutcome",
]


# Response extensions the capture cannot see through: the app must send plain body messages.
_UNCAPTURABLE: Final = (
    "http.response.pathsend",
    "http.response.zerocopy",
    "http.response.trailers",
)
OUTCOME_UNKNOWN: Final = "retrysafe.outcome_unknown"
"""The scope extension an app calls when it cannot know its outcome yet (B38): see
`UnknownOutcome`. Offered only by a middleware with `outcome_unknown = True` (the proxy's)."""
_SETTLE_SECONDS: Final = 10.0  # the bound on storing an unknown outcome while cancelled


class IdempotencyMiddleware(MiddlewareBase[ASGIApp, Scope, AsyncStore, AsyncFlow]):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args: see `retrysafe._http.middleware.MiddlewareBase`; `app` is an ASGI app, `store` an
    async store (`retrysafe.open_async_store(url)`), and `route_settings` gets the ASGI scope.
    """

    _path = staticmethod(route_path)

    @staticmethod
    def _new_flow(store: AsyncStore, observation: Observation) -> AsyncFlow:
        return AsyncFlow(store, logger=logger, observation=observation)

    outcome_unknown: bool = False
    """Offer the app the `OUTCOME_UNKNOWN` extension (B38)."""
    principal: Callable[[Scope], Awaitable[object]] | None = None
    """Where no authentication middleware named the user (`scope["user"]`), a coroutine of the
    scope that returns the request's user, or None (B8): FastAPI's `install(principal=...)`."""

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
        operation = self.observation.start()
        try:
            await self._track(scope, receive, send, settings, values)
        finally:
            self.observation.end(operation)

    async def _track(
        self, scope: Scope, receive: Receive, send: Send, settings: Settings, values: list[bytes]
    ) -> None:
        tracked = None
        try:
            scoper = self._scoper or await self._load_scoper()
            tracked = await track_request(
                scope, receive, send, settings, values, scoper=scoper, principal=self.principal
            )
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
            if admitted.claim is not None:  # over the scope's cap: let a retry run it (the claim's
                # own identity: the previous release's where it was admitted on that, B39)
                await self.flow.release(admitted.claim.record.identity, admitted.token)
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
        flow = AsyncFlow(self.store, observation=self.observation)  # its store calls are told
        self._scoper = Scoper(await aload_secret(flow))
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
        delays the answer nor changes the stored outcome; an exception there is logged.

        With `outcome_unknown` on, the app may call the scope extension `OUTCOME_UNKNOWN`
        (see `UnknownOutcome`) to answer the client at once and keep the claim (B38)."""
        execution = self.flow.execution(admitted, settings)
        unknown = UnknownOutcome(send) if self.outcome_unknown else None
        exchange = _Exchange(execution, settings, receive, send, unknown)
        capture = exchange.capture
        # An exception before the last body message leaves the execution unfinished: the
        # claim is released, so a retry runs again (B18); a cancellation leaves the outcome
        # unknown, and the claim is kept until its lease ends (B40, `interrupts`) -- unless
        # the app said its outcome is unknown: then the outcome it named is stored (B38); or
        # unless its response, past the storable size, was already streaming to the client:
        # then the effect happened, and the "response not stored" outcome is stored (B22).
        async with execution:
            try:
                app_scope = _app_scope(scope, unknown)
                await self.app(app_scope, replay_body(body, exchange.receive), exchange.send)
            except BaseException as error:
                settled = False
                if unknown is not None and unknown.answered and not capture.complete:
                    settled = True
                    await unknown.settle(execution, settings)
                elif capture.overflowed and not execution.finished:
                    # Streaming (its last message too, if sending it failed): its status went
                    # out, so the effect happened; the key keeps "response not stored" (B22).
                    settled = True
                    await exchange.finish_streamed()
                if not isinstance(error, Exception) or not (capture.complete or settled):
                    raise
                logger.exception(
                    "The app raised after its response to %s was complete or streaming, or "
                    "after it said its outcome is unknown; the outcome stands",
                    execution.identity,
                )
                return
            if capture.complete:
                return
            if unknown is not None and unknown.answered:
                await unknown.settle(execution, settings)
                return
            if capture.overflowed:  # it stopped streaming: its client left, say
                await exchange.finish_streamed()
                return
            await execution.finish(None)  # the app returned without finishing its response
        if exchange.start:  # so does the client's: what the app sent, left unfinished
            await send(exchange.start)
            await send({"type": "http.response.body", "body": capture.body(), "more_body": True})


class _Exchange:
    """What the app of one execution hears and sends: its response is captured up to the
    storable size, stored and answered once complete (B18), streamed past that size (B22,
    B23); and it hears that its client left (`http.disconnect`) only once its response is
    complete or streaming, so a client's timeout cannot cut the outcome short."""

    __slots__ = (
        "_answered", "_receive", "_send", "_unknown", "capture", "execution", "settings", "start",
    )  # fmt: skip

    def __init__(
        self,
        execution: AsyncExecution,
        settings: Settings,
        receive: Receive,
        send: Send,
        unknown: UnknownOutcome | None,
    ) -> None:
        self.execution, self.settings = execution, settings
        self.capture = ResponseCapture(settings.max_response_size)
        self.start: Message = {}
        self._receive, self._send, self._unknown = receive, send, unknown
        self._answered: anyio.Event | None = None  # made if the app listens past its body

    async def receive(self) -> Message:
        """The app's `receive` once it has its request body."""
        capture = self.capture
        if not (capture.complete or capture.overflowed):
            self._answered = self._answered or anyio.Event()
            await self._answered.wait()
        return await self._receive()

    async def send(self, message: Message) -> None:
        """The app's `send`."""
        kind, capture, unknown = message["type"], self.capture, self._unknown
        # Once the app said its outcome is unknown, the client has its answer; the app's is stored.
        client: Send = self._send if unknown is None or not unknown.answered else _discard
        if kind == "http.response.start":
            self.start = message
            capture.start(message["status"], message.get("headers", ()))
        elif kind == "http.response.body":
            if capture.complete:
                return  # the response is over; nothing more reaches the client
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            capture.complete = not more
            if capture.overflowed:
                await client(message)
            elif capture.add(chunk):  # past the storable limit: stream from here on
                self._answering()
                await client(self.start)
                await client({"type": kind, "body": capture.take(), "more_body": more})
            if capture.complete:  # the outcome: store it, then answer at once
                self._answering()
                await self.execution.finish(outcome_to_store(capture, self.settings))
                if not capture.overflowed:
                    await _send_whole(client, self.start, capture.body())
        else:
            await client(message)

    async def finish_streamed(self) -> None:
        """Store the outcome of a response that ended short while streaming to the client:
        its status went out, so the effect happened (B22); a retry gets response-not-stored."""
        self.capture.complete = True
        await self.execution.finish(outcome_to_store(self.capture, self.settings))

    def _answering(self) -> None:
        if self._answered is not None:
            self._answered.set()


class UnknownOutcome:
    """The `OUTCOME_UNKNOWN` scope extension: an app (the proxy) calls it with two responses
    when it cannot know its outcome yet, say an upstream that has not answered in time (B38).

    `answer` reaches the client at once; the claim is kept, renewed while the app runs, and the
    app's later response is stored (not sent) under the outcome policy. If the app ends without
    one (it gave up, raised, or was cancelled), `otherwise` is stored: the effect may have
    happened, so the key is never run again; retries get `otherwise`.
    """

    __slots__ = ("_send", "answered", "otherwise")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.answered = False
        self.otherwise: Response | None = None

    async def __call__(self, answer: Response, otherwise: Response) -> None:
        """Send `answer` to the client now; store the app's later response, else `otherwise`."""
        if self.answered:
            return
        self.answered = True
        self.otherwise = otherwise
        await respond(self._send, answer)

    async def settle(self, execution: AsyncExecution, settings: Settings) -> None:
        """Store `otherwise`, even while cancelled (a bounded, shielded store call; a store
        that fails keeps it held, B19)."""
        if self.otherwise is None:
            return
        stored = self.otherwise
        outcome = encode_outcome(stored.status, stored.headers, stored.body, settings)
        with anyio.move_on_after(_SETTLE_SECONDS, shield=True):
            await execution.finish(outcome)


def _app_scope(scope: Scope, unknown: UnknownOutcome | None) -> Scope:
    """Return the scope the app sees: without the response extensions the capture cannot see
    through, and with `OUTCOME_UNKNOWN` when the middleware offers it."""
    extensions = scope.get("extensions")
    if unknown is None and not (extensions and any(n in extensions for n in _UNCAPTURABLE)):
        return scope
    kept = {k: v for k, v in (extensions or {}).items() if k not in _UNCAPTURABLE}
    if unknown is not None:
        kept[OUTCOME_UNKNOWN] = unknown
    return {**scope, "extensions": kept}


async def _discard(message: Message) -> None:
    """A `send` for a client that already has its answer."""


async def _send_whole(send: Send, start: Message, body: bytes) -> None:
    await send(start)
    await send({"type": "http.response.body", "body": body, "more_body": False})
