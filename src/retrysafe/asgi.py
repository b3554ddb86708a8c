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

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from typing import Final, Unpack

import anyio

from retrysafe._asgi_io import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    replay_body,
    respond,
    track_request,
)
from retrysafe._engine import Decision
from retrysafe._errors import FencedError, StoreError
from retrysafe._http import (
    CLAIM_RETRIES,
    KEY_HEADER,
    HttpCounters,
    ResponseCapture,
    Router,
    RouteSettings,
    ScopeLimiter,
    Settings,
    SettingsOptions,
    hook_may_require_key,
    in_flight,
    logger,
    mismatch,
    outcome_to_store,
    replay_response,
    store_unavailable,
    too_many_in_flight,
    verdict,
)
from retrysafe._record import Claim, Identity
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
# How long cleanup may take once the request was cancelled.
_CLEANUP_SECONDS: Final = 5.0


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
        base = settings or Settings()
        self.settings = dataclasses.replace(base, **options) if options else base
        self.counters = HttpCounters()
        """What the middleware did: executions, replays, and failures to store (B19)."""
        self._router = Router(self.settings, routes, hooked=route_settings is not None)
        self._hook = route_settings
        self._methods = self._router.methods
        self._may_require = self._router.may_require
        cap = self.settings.max_in_flight_per_scope
        self._limiter = None if cap is None else ScopeLimiter(cap)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection; all but covered HTTP requests pass straight through."""
        if scope["type"] != "http" or scope["method"] not in self._methods:
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == KEY_HEADER]
        if not values and not (
            self._may_require
            if self._hook is None
            else hook_may_require_key(self._hook, self.settings)
        ):
            await self.app(scope, receive, send)
            return
        if self._hook is None:
            settings = self._router.for_path(scope["path"])
        else:
            settings = self._router.for_route(self._hook(scope))
        if (
            settings is None
            or scope["method"] not in settings.methods
            or not (values or settings.required)
        ):
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
            claim = await self._admit(identity, fingerprint, settings, send)
        except StoreError:
            logger.exception("The idempotency store failed; fail_open=%s", settings.fail_open)
            if settings.fail_open:
                await self.app(scope, replay_body(body, receive), send)
            else:
                await respond(send, store_unavailable(settings))
            return
        if claim is None:  # answered already
            return
        if self._limiter is not None and not self._limiter.enter(identity.scope):
            await self._release(identity, claim.token)
            await respond(send, too_many_in_flight(settings))
            return
        try:
            await self._execute(
                scope, receive, send, settings=settings, identity=identity, claim=claim, body=body
            )
        finally:
            if self._limiter is not None:
                self._limiter.leave(identity.scope)

    async def _admit(
        self, identity: Identity, fingerprint: str, settings: Settings, send: Send
    ) -> Claim | None:
        """Claim the key; answer a replay, mismatch or in-flight duplicate and return None."""
        deadline: float | None = None  # set when a duplicate first finds the key in flight
        retries = CLAIM_RETRIES
        while True:
            claim = await self.store.claim(
                identity, fingerprint, lease=settings.lease, retention=settings.retention
            )
            decision = verdict(claim, fingerprint, self.store.clock.now())
            if decision is Decision.EXECUTE:
                if claim.acquired:
                    return claim
                # The lease or retention ran out between the store's answer and now: claim
                # again, a few times at most (a store whose clock lags ours must not spin us).
                retries -= 1
                if retries > 0:
                    continue
                await respond(send, in_flight(settings))
                return None
            if decision is Decision.REPLAY:
                self.counters.add("replays")
                await respond(send, replay_response(claim.record, settings))
                return None
            if decision is Decision.MISMATCH:
                await respond(send, mismatch(settings))
                return None
            if deadline is None:
                deadline = anyio.current_time() + settings.wait
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                await respond(send, in_flight(settings))
                return None
            await self.store.wait(identity, timeout=remaining)

    async def _execute(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        identity: Identity,
        claim: Claim,
        body: bytes,
    ) -> None:
        """Run the app under the claim, then store or release its outcome and answer."""
        self.counters.add("executions")
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
        try:
            error = await self._run_app(
                app_scope,
                replay_body(body, receive),
                capture_send,
                settings=settings,
                identity=identity,
                claim=claim,
            )
        except BaseException:
            # Cancelled while the app ran (shutdown, disconnect): let a retry run it again.
            await self._release(identity, claim.token)
            raise
        if error is not None:
            await self._release(identity, claim.token)
            raise error
        outcome = outcome_to_store(capture, settings)
        if outcome is None:
            await self._release(identity, claim.token)
        else:
            await self._complete(identity, claim.token, outcome, settings)
        if not capture.overflowed and start:
            await send(start)
            await send({"type": "http.response.body", "body": capture.body(), "more_body": False})

    async def _run_app(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        identity: Identity,
        claim: Claim,
    ) -> Exception | None:
        """Run the app while its lease is renewed (B16); return the app's exception, if any."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # another event loop (trio): a task renews beside the app
            return await self._run_app_in_task_group(
                scope, receive, send, settings=settings, identity=identity, claim=claim
            )
        heartbeat = _Heartbeat(self, loop, identity, claim.token, settings.lease)
        try:
            await self.app(scope, receive, send)
        except Exception as exc:  # raised again by the caller, after the release
            return exc
        finally:
            await heartbeat.stop()
        return None

    async def _run_app_in_task_group(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        settings: Settings,
        identity: Identity,
        claim: Claim,
    ) -> Exception | None:
        """`_run_app` off asyncio: a heartbeat task in a task group, cancelled at the end."""
        error: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._heartbeat, identity, claim.token, settings.lease)
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # raised again by the caller, after the release
                error = exc
            finally:
                group.cancel_scope.cancel()
        return error

    async def _heartbeat(
        self, identity: Identity, token: str, lease: float, *, wait_first: bool = True
    ) -> None:
        """Renew the lease every third of it until cancelled or fenced (B16)."""
        if not wait_first and not await self._renew(identity, token, lease):
            return
        while True:
            await anyio.sleep(lease / 3)
            if not await self._renew(identity, token, lease):
                return

    async def _renew(self, identity: Identity, token: str, lease: float) -> bool:
        """Renew the lease once; return False if the claim is lost (stop renewing)."""
        try:
            await self.store.renew(identity, token, lease=lease)
        except FencedError:
            self.counters.add("fenced")
            logger.warning("Lost the claim on %s to another worker while running", identity)
            return False
        except Exception:
            self.counters.add("renew_failures")
            logger.exception("Cannot renew the lease on %s", identity)
        return True

    async def _complete(
        self, identity: Identity, token: str, outcome: bytes, settings: Settings
    ) -> None:
        """Store the outcome; a failure is logged and counted, never raised (B19)."""
        with anyio.CancelScope(shield=True):
            try:
                await self.store.complete(identity, token, outcome, retention=settings.retention)
            except FencedError:
                self.counters.add("fenced")
                logger.error(
                    "The claim on %s was taken over while the handler ran; its outcome was "
                    "not stored",
                    identity,
                )
            except Exception:
                self.counters.add("complete_failures")
                logger.exception(
                    "Cannot store the outcome of %s; it stays in flight until its lease ends",
                    identity,
                )

    async def _release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; shielded from the request's cancellation."""
        with anyio.move_on_after(_CLEANUP_SECONDS, shield=True):
            try:
                await self.store.release(identity, token)
            except FencedError:
                logger.debug("The claim on %s was already gone when releasing", identity)
            except Exception:
                self.counters.add("release_failures")
                logger.exception("Cannot release the claim on %s; its lease will end", identity)


class _Heartbeat:
    """The lease renewal of one execution on asyncio, at no cost to a request shorter than it.

    A timer fires a third of the lease after the app started; only if the app is still running
    then does a task start, which renews at once and every third of the lease after (B16). The
    first renewal is due at the same moment as with a task started beside the app, so a handler
    slower than its lease is never taken over while alive; a short request pays for a timer
    handle instead of a task it would create, cancel and wait for.
    """

    __slots__ = ("_identity", "_lease", "_loop", "_middleware", "_task", "_timer", "_token")

    def __init__(
        self,
        middleware: IdempotencyMiddleware,
        loop: asyncio.AbstractEventLoop,
        identity: Identity,
        token: str,
        lease: float,
    ) -> None:
        self._middleware = middleware
        self._loop = loop
        self._identity = identity
        self._token = token
        self._lease = lease
        self._task: asyncio.Task[None] | None = None
        self._timer = loop.call_later(lease / 3, self._start)

    def _start(self) -> None:
        self._task = self._loop.create_task(
            self._middleware._heartbeat(self._identity, self._token, self._lease, wait_first=False)
        )

    async def stop(self) -> None:
        """Stop renewing; once this returns, no renewal is running or will run."""
        self._timer.cancel()
        task = self._task
        if task is None:
            return
        task.cancel()
        # Wait for the renewal to end even if this request is being cancelled, so it cannot
        # land after the release or completion that follows.
        with anyio.CancelScope(shield=True):
            await asyncio.wait((task,))
