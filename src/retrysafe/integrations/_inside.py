"""The flow driven from inside a sync framework's request handling, where the caller is known.

The WSGI and ASGI middleware run before the framework, so they cannot see a user that only
exists inside it: Django's `request.user`, Flask-Login's `current_user`. Django's native
middleware and Flask's extension run the same flow from within, once the framework has
authenticated the caller, and name that user as the principal of the scope (B8):

    admit(request, environ, body=..., user=...)
        -> None: not covered (or the store failed and `fail_open`): let the view run untracked
        -> Response: answer it (a replay, a refusal, a problem); the view does not run
        -> Running: run the view under the claim, then `complete` / `stream` / `release` it

Everything else is the shared HTTP core (`retrysafe._http`) and flow (`retrysafe._flow`); each
framework module only reads its request and writes its response.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from retrysafe._errors import StoreError
from retrysafe._flow import SyncExecution, SyncFlow
from retrysafe._flow.observing import Observation
from retrysafe._flow.secret import load_secret
from retrysafe._http import (
    Header,
    Response,
    ResponseCapture,
    Scoper,
    Settings,
    body_unavailable,
    check_content_length,
    logger,
    new_identity,
    outcome_to_store,
    principal_of,
    read_key,
    too_large,
)
from retrysafe._http.flow import unresolved
from retrysafe._http.middleware import MiddlewareBase
from retrysafe._http.scope import ScopeError
from retrysafe._http.wsgi_io import Streamed, close_iterable, request_view
from retrysafe._record import Identity
from retrysafe.observe import Operation
from retrysafe.stores.base import Store

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["InsideMiddleware", "Running", "body_within", "header_lines"]

AppT = TypeVar("AppT")
RequestT = TypeVar("RequestT")


class InsideMiddleware(MiddlewareBase[AppT, RequestT, Store, SyncFlow]):
    """The idempotency flow run by a framework's own request hooks, with a sync store.

    Args: see `retrysafe._http.middleware.MiddlewareBase`; `route_settings` gets what the
    framework module passes to `admit` as `request`.
    """

    face = "wsgi"  # sync, from WSGI's environ (Django runs it in a thread under ASGI too)
    refusals: tuple[type[BaseException], ...] = ()
    """What the framework's principal hook raises to refuse a request, as the view would
    (werkzeug's `abort(401)`): the framework answers it; nothing was claimed."""

    @staticmethod
    def _new_flow(store: Store, observation: Observation) -> SyncFlow:
        return SyncFlow(store, logger=logger, observation=observation)

    def admit(
        self,
        request: RequestT,
        environ: WSGIEnvironment,
        *,
        body: Callable[[Settings], bytes | Response],
        user: Callable[[], object],
    ) -> Running | Response | None:
        """Admit a request: None to let it run untracked, the response to answer, or the
        claim to run it under.

        Args:
            request: what the `route_settings` hook is given.
            environ: the WSGI environ (or Django's `META`): method, path, headers.
            body: returns the whole request body within a settings' limit, or the 413 problem.
            user: returns the user the framework authenticated (None or unauthenticated:
                no principal); called only for a covered request with a key. A failure is a
                `ScopeError` (`user_of`), answered with the 500 scope-unresolved problem; one
                of `refusals` that it raises is the framework's to answer.
        """
        method = environ["REQUEST_METHOD"]
        if method not in self._methods:
            return None
        value: str | None = environ.get("HTTP_IDEMPOTENCY_KEY")
        settings = self._gate.settings_for(request, method, value is not None)
        if settings is None:
            return None
        values = [] if value is None else [value.encode("latin-1")]
        operation = self.observation.start()
        try:
            admitted = self._admit(
                environ, settings, values, body=body, user=user, operation=operation
            )
        except BaseException:  # the framework's own refusal (or a failure) answers it
            self.observation.end(operation)
            raise
        if not isinstance(admitted, Running):
            self.observation.end(operation)
        return admitted

    def _admit(
        self,
        environ: WSGIEnvironment,
        settings: Settings,
        values: list[bytes],
        *,
        body: Callable[[Settings], bytes | Response],
        user: Callable[[], object],
        operation: Operation | None,
    ) -> Running | Response | None:
        try:
            scoper = self._scoper or self._load_scoper()
            prepared = _prepare(environ, settings, values, scoper, body=body, user=user)
            if isinstance(prepared, Response):
                return prepared
            identity, fingerprint = prepared
            admitted = self.flow.admit(identity, fingerprint, settings)
        except StoreError:
            return self._store_failed(settings)  # None: fail open, the view runs untracked
        refused = self._refusal(admitted, identity.scope, settings)
        if refused is not None:
            if admitted.claim is not None:  # over the scope's cap: let a retry run it (the claim's
                # own identity: the previous release's where it was admitted on that, B39)
                self.flow.release(admitted.claim.record.identity, admitted.token)
            return refused
        execution = self.flow.execution(admitted, settings).start()
        leave = functools.partial(self._leave, identity.scope)
        return Running(settings, execution, leave, self.observation, operation)

    def user_of(self, find: Callable[[], object], name: str) -> object:
        """Return the user `find()` returns: the framework's principal hook (B8).

        Args:
            find: the hook (Flask's `principal()`, Django's lazy `request.user`).
            name: what it is, for the problem's detail and the log (`Loading request.user`).

        Raises:
            ScopeError: `find()` failed, so the caller is unknown: a fault of the server's,
                never taken for no caller (the credential's scope, or the shared one). The
                error's type is named, not its message, which may hold what the client sent.
                One of `refusals` passes as it is: the framework's to answer.
        """
        try:
            return find()
        except self.refusals:
            raise
        except Exception as error:
            raise ScopeError(
                f"{name} failed ({type(error).__name__}), so the caller of this request is unknown."
            ) from error

    def _load_scoper(self) -> Scoper:
        """Load the scope secret kept in the store (B8), once."""
        flow = SyncFlow(self.store, observation=self.observation)  # its store calls are told
        self._scoper = Scoper(load_secret(flow))
        return self._scoper


def _prepare(
    environ: WSGIEnvironment,
    settings: Settings,
    values: list[bytes],
    scoper: Scoper,
    *,
    body: Callable[[Settings], bytes | Response],
    user: Callable[[], object],
) -> tuple[Identity, str] | Response:
    """Return the identity and fingerprint of a keyed request, or the problem to answer."""
    key = read_key(values, settings)
    if isinstance(key, Response):
        return key
    data = body(settings)
    if isinstance(data, Response):
        return data
    try:
        view = request_view(environ)
        principal = principal_of(user()) or view.principal  # else REMOTE_USER, as under WSGI
    except ScopeError as error:  # a user with no stable name (B8)
        return unresolved(settings, error)
    if principal != view.principal:
        view = dataclasses.replace(view, principal=principal)
    identity = new_identity(settings, view, key, scoper)
    if isinstance(identity, Response):
        return identity
    return identity, settings.fingerprint_of(view, data)


def body_within(
    settings: Settings, length: str, read: Callable[[], bytes | None]
) -> bytes | Response:
    """Return the body `read()` returns, or the 413 problem if `length` (the Content-Length)
    or the body itself is over the settings' `max_body_size` (B22), or the 500 problem if
    `read()` returns None: the app consumed the body before it could be fingerprinted (B12)."""
    rejected = check_content_length(length.encode("latin-1"), settings)
    if rejected is not None:
        return rejected
    data = read()
    if data is None:
        return body_unavailable(settings)
    return too_large(settings) if len(data) > settings.max_body_size else data


def header_lines(response: Response) -> list[tuple[str, str]]:
    """Return a response's header lines as text, for a framework's response class."""
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in response.headers]


@dataclass(eq=False)
class Running:
    """A keyed request admitted to run under its claim; the view's response finishes it.

    Exactly one of `complete`, `stream`, `omit` or `release` is called, once the framework
    has the response (or failed to make one).
    """

    settings: Settings
    execution: SyncExecution
    _leave: Callable[[], None]  # gives back the scope's in-flight slot
    _observation: Observation  # the middleware's: its observers hear of the operation
    _operation: Operation | None
    _left: bool = False

    def complete(self, status: int, headers: Sequence[Header], body: bytes) -> None:
        """Finish with a whole response: stored if the policy says so (B18); a body over
        `max_response_size` is stored as "not stored" (B22)."""
        capture = self._capture(status, headers)
        capture.add(body)
        self._finish(capture)

    def stream(
        self,
        status: int,
        headers: Sequence[Header],
        chunks: Iterator[bytes],
        result: Iterable[bytes] = (),
    ) -> bytes | Iterable[bytes]:
        """Finish with a streamed response, as the WSGI middleware does (B23).

        Reads `chunks` up to `max_response_size`: a body that ends within it is stored and
        returned whole. A longer one is returned as an iterable that sends what was read, then
        the rest; once the client has the whole body, or leaves, or the body fails while
        streaming, its status is stored as "not stored" (B22). An error before the limit, while
        nothing was sent, releases the claim. Its `close()` closes `result` (the framework's
        original body, if it does not close that itself) too.
        """
        capture = self._capture(status, headers)
        try:
            for chunk in chunks:
                if capture.add(chunk):  # past the storable limit: stream from here on
                    streamed = Streamed(self.settings, self.execution, capture, result, chunks)
                    return self._done(streamed)  # its operation ends once it was sent
        except BaseException as error:
            self.release(error)
            close_iterable(result)
            raise
        self._finish(capture)
        return capture.body()

    def omit(self, status: int, headers: Sequence[Header]) -> None:
        """Finish with a response whose body cannot be captured: stored as "not stored"
        when the policy stores its status (B22), so a retry does not run the view again."""
        capture = self._capture(status, headers)
        capture.overflowed = True
        self._finish(capture)

    def release(self, error: BaseException | None = None) -> None:
        """Release the claim (the view raised `error`): a retry runs again (B18); or, if
        `error` interrupted it (`KeyboardInterrupt`, say), keep it until its lease ends (B40)."""
        self.execution.finish(None, error)
        self._done()

    def _capture(self, status: int, headers: Sequence[Header]) -> ResponseCapture:
        capture = ResponseCapture(self.settings.max_response_size)
        capture.start(status, headers)
        return capture

    def _finish(self, capture: ResponseCapture) -> None:
        capture.complete = True
        self.execution.finish(outcome_to_store(capture, self.settings))
        self._done()

    def _done(self, sent: Streamed | None = None) -> Iterable[bytes]:
        """Leave the scope's slot; end the operation now, or once `sent` is sent (B22)."""
        if self._left:
            return () if sent is None else sent
        self._left = True
        self._leave()
        if sent is not None:
            return self._observation.end_when_sent(self._operation, sent)
        self._observation.end(self._operation)
        return ()
