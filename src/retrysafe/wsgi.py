"""Idempotency-Key middleware for WSGI apps (Flask, Django, any WSGI app).

    from retrysafe import open_store
    from retrysafe.wsgi import IdempotencyMiddleware, RouteSettings

    app.wsgi_app = IdempotencyMiddleware(
        app.wsgi_app,
        store=open_store("sqlite:///idempotency.db"),
        routes={"/payments": RouteSettings(required=True)},
    )

The twin of `retrysafe.asgi.IdempotencyMiddleware`: the same settings and the same decisions
(`retrysafe._http`), with a sync store; the lease heartbeat is a thread. See docs/http.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Unpack

from retrysafe._errors import StoreError
from retrysafe._flow import Counters, SyncExecution, SyncFlow
from retrysafe._http import (
    Gate,
    Response,
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
from retrysafe._http.wsgi_io import close_iterable, path_of, prepare_request, respond
from retrysafe.stores.base import Store

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["IdempotencyMiddleware", "RouteSettings", "Settings"]


class IdempotencyMiddleware:
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args:
        app: the WSGI app to wrap.
        store: where records live (`retrysafe.open_store(url)`).
        routes: path pattern to `RouteSettings` (or None: not covered), first match wins;
            `*` matches within one path segment, `**` anything. Unlisted paths use `settings`.
        route_settings: instead of `routes`, a function of the WSGI environ returning the
            `RouteSettings` of the request, or None if it is not covered. It is called for
            requests whose method is in `methods`; for those without a key only if the hook
            has no `may_require_key` attribute or it is true (see `retrysafe.asgi`).
        settings: a `Settings` to start from; `options` override its fields.
        options: any `Settings` field by name (`required=True`, `wait=0`, ...).
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        store: Store,
        routes: Mapping[str, RouteSettings | None] | None = None,
        route_settings: Callable[[WSGIEnvironment], RouteSettings | None] | None = None,
        settings: Settings | None = None,
        **options: Unpack[SettingsOptions],
    ) -> None:
        self.app = app
        self.store = store
        self._gate = Gate(settings, routes, route_settings, path_of, **options)
        self.settings = self._gate.settings
        self.counters = Counters()
        """What the middleware did: executions, replays, and failures to store (B19)."""
        self.flow = SyncFlow(store, counters=self.counters, logger=logger)
        self._methods = self._gate.methods
        cap = self.settings.max_in_flight_per_scope
        self._limiter = None if cap is None else ScopeLimiter(cap)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request; all but covered requests pass straight through."""
        method = environ["REQUEST_METHOD"]
        if method not in self._methods:
            return self.app(environ, start_response)
        value: str | None = environ.get("HTTP_IDEMPOTENCY_KEY")
        settings = self._gate.settings_for(environ, method, value is not None)
        if settings is None:
            return self.app(environ, start_response)
        # WSGI servers join repeated header lines with commas; parse_key refuses the result.
        values = [] if value is None else [value.encode("latin-1")]
        return self._track(environ, start_response, settings, values)

    def _track(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        settings: Settings,
        values: list[bytes],
    ) -> Iterable[bytes]:
        prepared = prepare_request(environ, settings, values)
        if isinstance(prepared, Response):
            return respond(start_response, prepared)
        environ, identity, fingerprint = prepared
        try:
            admitted = self.flow.admit(
                identity,
                fingerprint,
                lease=settings.lease,
                retention=settings.retention,
                wait=settings.wait,
            )
        except StoreError:
            logger.exception("The idempotency store failed; fail_open=%s", settings.fail_open)
            if settings.fail_open:
                return self.app(environ, start_response)
            return respond(start_response, store_unavailable(settings))
        refused = answer(admitted, settings)
        if refused is not None:
            return respond(start_response, refused)
        if self._limiter is not None and not self._limiter.enter(identity.scope):
            self.flow.release(identity, admitted.token)
            return respond(start_response, too_many_in_flight(settings))
        try:
            execution = self.flow.execution(
                identity, admitted.token, lease=settings.lease, retention=settings.retention
            )
            return self._execute(environ, start_response, settings, execution)
        finally:
            if self._limiter is not None:
                self._limiter.leave(identity.scope)

    def _execute(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        settings: Settings,
        execution: SyncExecution,
    ) -> Iterable[bytes]:
        """Run the app under the claim, then store or release its outcome and answer."""
        capture = ResponseCapture(settings.max_response_size)
        status_line = ""
        header_lines: list[tuple[str, str]] = []

        def capture_start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal status_line, header_lines
            status_line, header_lines = status, headers
            capture.start(
                int(status.split(" ", 1)[0]),
                [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            )
            return capture.add

        result: Iterable[bytes] = ()
        execution.start()
        try:
            result = self.app(environ, capture_start)
            chunks = iter(result)
            for chunk in chunks:
                if capture.add(chunk):  # past the storable limit: stream from here on
                    start_response(status_line, header_lines)
                    return _Streamed(settings, execution, capture, result, chunks)
            capture.complete = True
            close_iterable(result)
        except BaseException:
            close_iterable(result)
            execution.finish(None)  # released: a retry runs again (B18)
            raise
        execution.finish(outcome_to_store(capture, settings))
        start_response(status_line, header_lines)
        return [capture.body()]


class _Streamed:
    """A response past the storable limit, streamed to the client; finishes on close (B22)."""

    def __init__(
        self,
        settings: Settings,
        execution: SyncExecution,
        capture: ResponseCapture,
        result: Iterable[bytes],
        chunks: Iterator[bytes],
    ) -> None:
        self._settings = settings
        self._execution = execution
        self._capture = capture
        self._result = result
        self._chunks = chunks
        self._first = capture.take()
        self._failed = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        """Yield the body; an error from the app releases the claim."""
        yield self._first
        try:
            for chunk in self._chunks:
                self._capture.add(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            self._failed = True
            raise
        self._capture.complete = True

    def close(self) -> None:
        """Close the app's iterable, then store the outcome or release the claim."""
        if self._closed:
            return
        self._closed = True
        try:
            close_iterable(self._result)
        finally:
            if self._failed:
                self._execution.finish(None)
            else:
                # The app ran, and its status is known: even if the client left mid-body, a
                # retry must not run it again.
                self._capture.complete = True
                self._execution.finish(outcome_to_store(self._capture, self._settings))
