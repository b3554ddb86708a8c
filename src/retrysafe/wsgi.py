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
What configures it and what it hands back are exported here too, as in `retrysafe.asgi`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from retrysafe._errors import StoreError
from retrysafe._flow import SyncExecution, SyncFlow
from retrysafe._flow.counters import Counters
from retrysafe._flow.observing import Observation
from retrysafe._flow.secret import load_secret
from retrysafe._http import Response, ResponseCapture, logger, outcome_to_store
from retrysafe._http.middleware import MiddlewareBase
from retrysafe._http.scope import Scoper
from retrysafe._http.settings import RequestView, RouteSettings, Settings, SettingsOptions
from retrysafe._http.wsgi_io import (
    Answered,
    Streamed,
    close_iterable,
    path_of,
    prepare_request,
    respond,
)
from retrysafe._keys import KeyPolicy
from retrysafe.stores.base import Store

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401

__all__ = [
    "Counters",
    "IdempotencyMiddleware",
    "KeyPolicy",
    "Observation",
    "RequestView",
    "RouteSettings",
    "Settings",
    "SettingsOptions",
]


class IdempotencyMiddleware(MiddlewareBase["WSGIApplication", "WSGIEnvironment", Store, SyncFlow]):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args: see `retrysafe._http.middleware.MiddlewareBase`; `app` is a WSGI app, `store` a
    sync store (`retrysafe.open_store(url)`), and `route_settings` gets the WSGI environ.
    """

    face = "wsgi"

    _path = staticmethod(path_of)

    @staticmethod
    def _new_flow(store: Store, observation: Observation) -> SyncFlow:
        return SyncFlow(store, logger=logger, observation=observation)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request; all but covered requests pass straight through."""
        method = environ["REQUEST_METHOD"]
        if method not in self._methods:
            return self.app(environ, start_response)
        value: str | None = environ.get("HTTP_IDEMPOTENCY_KEY")
        settings = self._gate.settings_for(environ, method, value is not None)
        if settings is None:
            return self.app(environ, start_response)
        # WSGI servers join repeated header lines with commas; parse_key refuses the result
        # (a bare key has no comma, and two quoted ones joined are no sf-string).
        values = [] if value is None else [value.encode("latin-1")]
        operation = self.observation.start()
        try:
            response = self._track(environ, start_response, settings, values)
        except BaseException:
            self.observation.end(operation)
            raise
        if isinstance(response, Streamed):  # its outcome is stored as it ends (B22)
            return self.observation.end_when_sent(operation, response)
        self.observation.end(operation)
        return response

    def _track(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        settings: Settings,
        values: list[bytes],
    ) -> Iterable[bytes]:
        try:
            scoper = self._scoper or self._load_scoper()
            prepared = prepare_request(environ, settings, values, scoper)
            if isinstance(prepared, Response):
                return respond(start_response, prepared)
            environ, identity, fingerprint = prepared
            admitted = self.flow.admit(identity, fingerprint, settings)
        except StoreError:
            unavailable = self._store_failed(settings)
            if unavailable is None:
                return self.app(environ, start_response)
            return respond(start_response, unavailable)
        refused = self._refusal(admitted, identity.scope, settings)
        if refused is not None:
            if admitted.claim is not None:  # over the scope's cap: let a retry run it (the claim's
                # own identity: the previous release's where it was admitted on that, B39)
                self.flow.release(admitted.claim.record.identity, admitted.token)
            return respond(start_response, refused)
        try:
            execution = self.flow.execution(admitted, settings)
            return self._execute(environ, start_response, settings, execution)
        finally:
            self._leave(identity.scope)

    def _load_scoper(self) -> Scoper:
        """Load the scope secret kept in the store (B8), once."""
        flow = SyncFlow(self.store, observation=self.observation)  # its store calls are told
        self._scoper = Scoper(load_secret(flow))
        return self._scoper

    def _execute(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        settings: Settings,
        execution: SyncExecution,
    ) -> Iterable[bytes]:
        """Run the app under the claim; its outcome is the response once its iterable is
        exhausted (B18): stored, then answered. The app's `close()` (Django's request_finished,
        say) runs after the answer was sent and cannot change it; an error there is logged."""
        capture = ResponseCapture(settings.max_response_size)
        status_line = ""
        header_lines: list[tuple[str, str]] = []
        written: Callable[[bytes], object] | None = None  # the server's write, once streaming

        def capture_start(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal status_line, header_lines
            status_line, header_lines = status, headers
            capture.start(
                int(status.split(" ", 1)[0]),
                [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in headers],
            )
            return write

        def write(data: bytes) -> None:
            """The app's `write()`: buffered up to the limit, then passed to the server."""
            nonlocal written
            if written is not None:
                capture.add(data)
                written(data)
            elif capture.add(data):  # past the storable limit: stream from here on (B22)
                written = start_response(status_line, header_lines)
                written(capture.take())

        result: Iterable[bytes] = ()
        execution.start()
        try:
            result = self.app(environ, capture_start)
            chunks = iter(result)
            if written is not None:  # write() already streamed: the iterable follows it
                return Streamed(settings, execution, capture, result, chunks)
            for chunk in chunks:
                if capture.add(chunk):  # past the storable limit: stream from here on
                    start_response(status_line, header_lines)
                    return Streamed(settings, execution, capture, result, chunks)
        except BaseException as error:
            try:
                close_iterable(result)
            finally:
                if written is not None:  # its status went out with what write() sent (B22)
                    capture.complete = True
                    execution.finish(outcome_to_store(capture, settings))
                else:  # released, a retry runs again (B18); or kept, interrupted (B40)
                    execution.finish(None, error)
            raise
        capture.complete = True
        execution.finish(outcome_to_store(capture, settings))
        start_response(status_line, header_lines)
        return Answered([capture.body()], result)
