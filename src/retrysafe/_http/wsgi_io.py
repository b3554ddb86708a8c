"""The WSGI plumbing of the middleware: environ to request, the body, the answer (whole, or
streamed past the storable limit), shared by the WSGI middleware and the framework faces.

The twin of `asgi_io`; both feed the sans-I/O core (`settings`, `problems`, `outcome`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from retrysafe._flow import SyncExecution
from retrysafe._http.flow import new_identity, unresolved
from retrysafe._http.outcome import ResponseCapture, outcome_to_store
from retrysafe._http.problems import (
    Response,
    check_content_length,
    incomplete,
    read_key,
    reason_phrase,
    too_large,
)
from retrysafe._http.routing import RoutePath
from retrysafe._http.scope import ScopeError, Scoper, principal_of
from retrysafe._http.settings import RequestView, Settings, logger
from retrysafe._record import Identity

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

PRINCIPAL_KEY: Final = "retrysafe.principal"
"""The environ key where a framework integration names the authenticated caller (B8)."""

__all__ = [
    "PRINCIPAL_KEY",
    "Answered",
    "Streamed",
    "close_iterable",
    "close_quietly",
    "path_of",
    "prepare_request",
    "read_body",
    "request_view",
    "respond",
]


def close_iterable(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


def prepare_request(
    environ: WSGIEnvironment, settings: Settings, values: list[bytes], scoper: Scoper
) -> tuple[WSGIEnvironment, Identity, str] | Response:
    """Check the key, body and scope; return the environ with the buffered body, the identity
    and the fingerprint, or the problem to answer (nothing stored)."""
    key = read_key(values, settings)
    if isinstance(key, Response):
        return key
    body = read_body(environ, settings)
    if isinstance(body, Response):
        return body
    environ = {**environ, "wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body))}
    try:
        request = request_view(environ)
    except ScopeError as error:  # a principal with no stable name (B8)
        return unresolved(settings, error)
    identity = new_identity(settings, request, key, scoper)
    if isinstance(identity, Response):
        return identity
    return environ, identity, settings.fingerprint_of(request, body)


def path_of(environ: WSGIEnvironment) -> RoutePath:
    """Return the path the app routes, `PATH_INFO`; its `whole` has the mount prefix
    `SCRIPT_NAME` before it."""
    script_name, path_info = _decoded(environ, "SCRIPT_NAME"), _decoded(environ, "PATH_INFO")
    return RoutePath(path_info or "/", script_name + path_info)


def _decoded(environ: WSGIEnvironment, name: str) -> str:
    """Return a path variable of `environ` as text (WSGI gives its bytes as latin-1)."""
    return str(environ.get(name, "")).encode("latin-1").decode("utf-8", "replace")


def request_view(environ: WSGIEnvironment) -> RequestView:
    headers = [
        (name[5:].replace("_", "-").lower().encode(), value.encode("latin-1"))
        for name, value in environ.items()
        if name.startswith("HTTP_")
    ]
    if environ.get("CONTENT_TYPE"):
        headers.append((b"content-type", environ["CONTENT_TYPE"].encode("latin-1")))
    return RequestView(
        method=environ["REQUEST_METHOD"],
        path=_decoded(environ, "SCRIPT_NAME") + _decoded(environ, "PATH_INFO"),  # prefix too
        query_string=environ.get("QUERY_STRING", "").encode("latin-1"),
        headers=headers,
        raw=environ,
        principal=principal_of(environ.get(PRINCIPAL_KEY) or environ.get("REMOTE_USER")),
        raw_path=_raw_path(environ),
    )


def _raw_path(environ: WSGIEnvironment) -> bytes | None:
    """Return the path as sent, where the server keeps it (gunicorn `RAW_URI`, uWSGI and
    others `REQUEST_URI`), without its query; None under servers that give only PATH_INFO."""
    uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not uri or not uri.startswith("/"):
        return None
    return str(uri).split("?", 1)[0].encode("latin-1")


def read_body(environ: WSGIEnvironment, settings: Settings) -> bytes | Response:
    """Return the whole request body, or the 413 problem, or the 400 one for a body that
    ended before its Content-Length (the app would have run on part of it)."""
    length = environ.get("CONTENT_LENGTH") or ""
    rejected = check_content_length(length.encode("latin-1"), settings)
    if rejected is not None:
        return rejected
    stream = environ["wsgi.input"]
    if length.isdigit():
        body = bytes(stream.read(int(length)))
        if len(body) < int(length):  # the client left mid-body: the app must not see a part
            return incomplete(settings, len(body), int(length))
        return body
    if environ.get("wsgi.input_terminated"):
        body = bytes(stream.read(settings.max_body_size + 1))
        return too_large(settings) if len(body) > settings.max_body_size else body
    return b""


def respond(start_response: StartResponse, response: Response) -> list[bytes]:
    start_response(
        f"{response.status} {reason_phrase(response.status)}",
        [(n.decode("latin-1"), v.decode("latin-1")) for n, v in response.headers],
    )
    return [response.body]


@dataclass(eq=False)
class Answered:
    """The whole answer; closing it closes the app's iterable after the answer was sent."""

    body: list[bytes]
    result: Iterable[bytes]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        """Close the app's iterable; its errors are logged, the stored outcome stands."""
        close_quietly(self.result)


def close_quietly(result: Iterable[bytes]) -> None:
    """Close the app's iterable after its response was complete; log what it raises."""
    try:
        close_iterable(result)
    except Exception:
        logger.exception("The app's close() raised after its response was complete")


@dataclass(eq=False)
class Streamed:
    """A response past the storable limit, streamed to the client; finishes on close (B22)."""

    settings: Settings
    execution: SyncExecution
    capture: ResponseCapture
    result: Iterable[bytes]
    chunks: Iterator[bytes]
    _failed: bool = False
    _closed: bool = False

    def __post_init__(self) -> None:
        self._first = self.capture.take()

    def __iter__(self) -> Iterator[bytes]:
        """Yield the body; the end, or an error from the app, stores the outcome (B22)."""
        yield self._first
        try:
            for chunk in self.chunks:
                self.capture.add(chunk)
                yield chunk
        except GeneratorExit:
            raise
        except BaseException:
            self._failed = True
            self._finish()  # now: a server may never call close() after an interruption
            raise
        self._finish()

    def _finish(self) -> None:
        # The app ran and its status went out: even if the client left mid-body, or the app
        # raised or was interrupted mid-body, a retry must not run it again, so the (omitted)
        # outcome is stored (B22), as the ASGI middleware does.
        self.capture.complete = True
        self.execution.finish(outcome_to_store(self.capture, self.settings))

    def close(self) -> None:
        """Store the outcome (a body that failed stored it as it failed), then close the app's
        iterable: its errors are raised after an error from the app (the server reports both),
        else logged."""
        if self._closed:
            return
        self._closed = True
        if self._failed:
            close_iterable(self.result)
            return
        self._finish()
        close_quietly(self.result)
