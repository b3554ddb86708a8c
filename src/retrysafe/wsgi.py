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

import dataclasses
import io
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Unpack

from retrysafe._concurrency import monotonic
from retrysafe._engine import Decision
from retrysafe._errors import FencedError, StoreError
from retrysafe._http import (
    CLAIM_RETRIES,
    HttpCounters,
    RequestView,
    Response,
    ResponseCapture,
    Router,
    RouteSettings,
    ScopeLimiter,
    Settings,
    SettingsOptions,
    check_content_length,
    hook_may_require_key,
    in_flight,
    logger,
    mismatch,
    new_identity,
    outcome_to_store,
    read_key,
    reason_phrase,
    replay_response,
    store_unavailable,
    too_large,
    too_many_in_flight,
    verdict,
)
from retrysafe._record import Claim, Identity
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

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one request; all but covered requests pass straight through."""
        method = environ["REQUEST_METHOD"]
        if method not in self._methods:
            return self.app(environ, start_response)
        value: str | None = environ.get("HTTP_IDEMPOTENCY_KEY")
        if value is None and not (
            self._may_require
            if self._hook is None
            else hook_may_require_key(self._hook, self.settings)
        ):
            return self.app(environ, start_response)
        if self._hook is None:
            settings = self._router.for_path(_path(environ))
        else:
            settings = self._router.for_route(self._hook(environ))
        if (
            settings is None
            or method not in settings.methods
            or (value is None and not settings.required)
        ):
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
        prepared = _prepare(environ, settings, values)
        if isinstance(prepared, Response):
            return _respond(start_response, prepared)
        environ, identity, fingerprint = prepared
        try:
            claim = self._admit(identity, fingerprint, settings)
        except StoreError:
            logger.exception("The idempotency store failed; fail_open=%s", settings.fail_open)
            if settings.fail_open:
                return self.app(environ, start_response)
            claim = store_unavailable(settings)
        if isinstance(claim, Response):
            return _respond(start_response, claim)
        if self._limiter is not None and not self._limiter.enter(identity.scope):
            self._release(identity, claim.token)
            return _respond(start_response, too_many_in_flight(settings))
        try:
            return self._execute(
                environ, start_response, settings=settings, identity=identity, claim=claim
            )
        finally:
            if self._limiter is not None:
                self._limiter.leave(identity.scope)

    def _admit(self, identity: Identity, fingerprint: str, settings: Settings) -> Claim | Response:
        """Claim the key, or return the answer for a replay, mismatch or in-flight duplicate."""
        deadline: float | None = None  # set when a duplicate first finds the key in flight
        retries = CLAIM_RETRIES
        while True:
            claim = self.store.claim(
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
                return in_flight(settings)
            if decision is Decision.REPLAY:
                self.counters.add("replays")
                return replay_response(claim.record, settings)
            if decision is Decision.MISMATCH:
                return mismatch(settings)
            if deadline is None:
                deadline = monotonic() + settings.wait
            remaining = deadline - monotonic()
            if remaining <= 0:
                return in_flight(settings)
            self.store.wait(identity, timeout=remaining)

    def _execute(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        *,
        settings: Settings,
        identity: Identity,
        claim: Claim,
    ) -> Iterable[bytes]:
        """Run the app under the claim, then store or release its outcome and answer."""
        self.counters.add("executions")
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

        heartbeat = _Heartbeat(self, identity, claim.token, settings.lease)
        result: Iterable[bytes] = ()
        try:
            result = self.app(environ, capture_start)
            chunks = iter(result)
            for chunk in chunks:
                if capture.add(chunk):  # past the storable limit: stream from here on
                    body = capture.take()
                    streamed = _Streamed(
                        self,
                        settings=settings,
                        identity=identity,
                        claim=claim,
                        capture=capture,
                        heartbeat=heartbeat,
                        result=result,
                        chunks=chunks,
                    )
                    start_response(status_line, header_lines)
                    return streamed.start(body)
            capture.complete = True
            _close(result)
        except BaseException:
            heartbeat.stop()
            _close(result)
            self._release(identity, claim.token)
            raise
        heartbeat.stop()
        self._finish(settings, identity, claim, capture)
        start_response(status_line, header_lines)
        return [capture.body()]

    def _finish(
        self, settings: Settings, identity: Identity, claim: Claim, capture: ResponseCapture
    ) -> None:
        """Store the outcome, or release the claim, by the outcome policy (B18)."""
        outcome = outcome_to_store(capture, settings)
        if outcome is None:
            self._release(identity, claim.token)
            return
        try:
            self.store.complete(identity, claim.token, outcome, retention=settings.retention)
        except FencedError:
            self.counters.add("fenced")
            logger.error(
                "The claim on %s was taken over while the handler ran; its outcome was not stored",
                identity,
            )
        except Exception:
            self.counters.add("complete_failures")
            logger.exception(
                "Cannot store the outcome of %s; it stays in flight until its lease ends",
                identity,
            )

    def _release(self, identity: Identity, token: str) -> None:
        """Release the claim so a retry runs again; a failure is logged."""
        try:
            self.store.release(identity, token)
        except FencedError:
            logger.debug("The claim on %s was already gone when releasing", identity)
        except Exception:
            self.counters.add("release_failures")
            logger.exception("Cannot release the claim on %s; its lease will end", identity)


class _Heartbeat:
    """The lease renewal of one execution: every third of the lease until stopped (B16).

    Renewals run on one shared thread (`_Heartbeats`), not a thread per request, which would
    cost more than a short request. `stop` waits for a renewal in progress, so none lands after
    the release or completion that follows it.
    """

    __slots__ = ("_lock", "_middleware", "_stopped", "due", "identity", "lease", "token")

    def __init__(
        self, middleware: IdempotencyMiddleware, identity: Identity, token: str, lease: float
    ) -> None:
        self._middleware = middleware
        self.identity = identity
        self.token = token
        self.lease = lease
        self.due = monotonic() + lease / 3
        self._lock = threading.Lock()
        self._stopped = False
        _HEARTBEATS.add(self)

    def stop(self) -> None:
        """Stop renewing; once this returns, no renewal is running or will run."""
        _HEARTBEATS.remove(self)
        with self._lock:
            self._stopped = True

    def renew(self) -> bool:
        """Renew the lease once unless stopped; return whether to keep renewing."""
        middleware = self._middleware
        with self._lock:
            if self._stopped:
                return False
            try:
                middleware.store.renew(self.identity, self.token, lease=self.lease)
            except FencedError:
                middleware.counters.add("fenced")
                logger.warning(
                    "Lost the claim on %s to another worker while running", self.identity
                )
                return False
            except Exception:
                middleware.counters.add("renew_failures")
                logger.exception("Cannot renew the lease on %s", self.identity)
        self.due = monotonic() + self.lease / 3
        return True


class _Heartbeats:
    """One daemon thread per process that renews every running execution's lease when due.

    It sleeps until the earliest renewal is due; a request adds its heartbeat (due a third of
    its lease from now) and removes it when the app returns, so a short request costs a dict
    insert and delete, and a wake-up only if its renewal is due before any other.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._beats: dict[int, _Heartbeat] = {}
        self._thread: threading.Thread | None = None
        self._next_wake = float("inf")

    def add(self, beat: _Heartbeat) -> None:
        """Start renewing `beat` when it is due."""
        with self._cond:
            self._beats[id(beat)] = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="retrysafe-wsgi-heartbeat", daemon=True
                )
                self._thread.start()
            if beat.due < self._next_wake:
                self._cond.notify()

    def remove(self, beat: _Heartbeat) -> None:
        """Stop renewing `beat` (a renewal in progress finishes)."""
        with self._cond:
            self._beats.pop(id(beat), None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = monotonic()
                due = [beat for beat in self._beats.values() if beat.due <= now]
                if not due:
                    self._next_wake = min((b.due for b in self._beats.values()), default=now + 60)
                    self._cond.wait(self._next_wake - now)
                    continue
                self._next_wake = now
            for beat in due:
                if not beat.renew():
                    self.remove(beat)

    def after_fork(self) -> None:
        """In a forked child, forget the parent's thread and executions."""
        self._cond = threading.Condition()
        self._beats = {}
        self._thread = None
        self._next_wake = float("inf")


_HEARTBEATS = _Heartbeats()
os.register_at_fork(after_in_child=_HEARTBEATS.after_fork)


class _Streamed:
    """A response past the storable limit, streamed to the client; finishes on close (B22)."""

    def __init__(
        self,
        middleware: IdempotencyMiddleware,
        *,
        settings: Settings,
        identity: Identity,
        claim: Claim,
        capture: ResponseCapture,
        heartbeat: _Heartbeat,
        result: Iterable[bytes],
        chunks: Iterator[bytes],
    ) -> None:
        self._middleware = middleware
        self._settings = settings
        self._identity = identity
        self._claim = claim
        self._capture = capture
        self._heartbeat = heartbeat
        self._result = result
        self._chunks = chunks
        self._first = b""
        self._failed = False
        self._closed = False

    def start(self, first: bytes) -> _Streamed:
        """Return self, to yield `first` and then the rest of the app's body."""
        self._first = first
        return self

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
            _close(self._result)
        finally:
            self._heartbeat.stop()
            middleware = self._middleware
            if self._failed:
                middleware._release(self._identity, self._claim.token)
            else:
                # The app ran, and its status is known: even if the client left mid-body, a
                # retry must not run it again.
                self._capture.complete = True
                middleware._finish(self._settings, self._identity, self._claim, self._capture)


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def _prepare(
    environ: WSGIEnvironment, settings: Settings, values: list[bytes]
) -> tuple[WSGIEnvironment, Identity, str] | Response:
    """Check the key and body; return the environ with the buffered body, identity, fingerprint."""
    key = read_key(values, settings)
    if isinstance(key, Response):
        return key
    body = _read_body(environ, settings)
    if isinstance(body, Response):
        return body
    environ = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    request = _request_view(environ)
    return environ, new_identity(settings, request, key), settings.fingerprint_of(request, body)


def _path(environ: WSGIEnvironment) -> str:
    raw = (str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))).encode(
        "latin-1"
    )
    return raw.decode("utf-8", "replace")


def _request_view(environ: WSGIEnvironment) -> RequestView:
    headers = [
        (name[5:].replace("_", "-").lower().encode(), value.encode("latin-1"))
        for name, value in environ.items()
        if name.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
    return RequestView(
        method=environ["REQUEST_METHOD"],
        path=_path(environ),
        query_string=environ.get("QUERY_STRING", "").encode("latin-1"),
        headers=headers,
        raw=environ,
    )


def _read_body(environ: WSGIEnvironment, settings: Settings) -> bytes | Response:
    """Return the whole request body, or the 413 problem."""
    length = environ.get("CONTENT_LENGTH") or ""
    rejected = check_content_length(length.encode("latin-1"), settings)
    if rejected is not None:
        return rejected
    stream = environ["wsgi.input"]
    if length.isdigit():
        return bytes(stream.read(int(length)))
    if environ.get("wsgi.input_terminated"):
        body = bytes(stream.read(settings.max_body_size + 1))
        return too_large(settings) if len(body) > settings.max_body_size else body
    return b""


def _respond(start_response: StartResponse, response: Response) -> list[bytes]:
    start_response(
        f"{response.status} {reason_phrase(response.status)}",
        [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers],
    )
    return [response.body]
