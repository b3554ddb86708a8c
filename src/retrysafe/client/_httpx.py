"""httpx transports that attach an Idempotency-Key once and retry safely (SPEC B32-B33).

They wrap another transport (STYLE 8, httpx "advanced/transports"):

    client = httpx.Client(transport=IdempotentTransport())
    client = httpx.AsyncClient(transport=AsyncIdempotentTransport(httpx.AsyncHTTPTransport()))
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
import httpx
import tenacity

from retrysafe._clock import Clock
from retrysafe.client._bodies import (
    AsyncBoundedStream,
    BoundedStream,
    adrained,
    drained,
    expired,
    reads_within,
)
from retrysafe.client._core import (
    DEFAULT_POLICY,
    Handling,
    RetryHook,
    RetryPolicy,
    _Call,
    _Settings,
    is_replay,
    make_settings,
)
from retrysafe.client._deadline import run_within
from retrysafe.client._urls import redirect_keeps_key
from retrysafe.observe import Observer

__all__ = ["AsyncIdempotentTransport", "IdempotentTransport"]

# What a lost request or response looks like to httpx: the outcome is unknown, so it is
# retried (with the same key). LocalProtocolError, UnsupportedProtocol, ProxyError and
# DecodingError are the caller's or the setup's fault and are not.
RETRIED_ERRORS: tuple[type[BaseException], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def _retried_error(error: BaseException) -> bool:
    return isinstance(error, RETRIED_ERRORS)


EXTENSION_REPLAYED = "idempotent_replayed"
EXTENSION_KEY = "idempotency_key"
EXTENSION_ATTEMPTS = "retrysafe_attempts"
# What a keyed request answered with a 307 or 308 to the same origin hands on to its
# redirect, which httpx builds with the same `extensions` dict (client/_urls.py).
_EXTENSION_HANDED_ON = "retrysafe_handed_on"

_Origin = tuple[str, str, int | None]


@dataclass(frozen=True, slots=True)
class _HandedOn:
    """The key a redirect keeps, for a request of `method` to `origin` only (where httpx
    actually sends it, which a `Location` can make another origin than urllib predicts), and
    when the operation began: the redirect has the same deadline (SPEC B33)."""

    key: str
    origin: _Origin
    method: str
    started: float


_Generated = weakref.WeakKeyDictionary[httpx.Request, tuple[str, _Origin]]
"""The key a transport generated for each request it sent, and the origin it was sent to, for
as long as the request lives: sent again to that origin, the request keeps its key."""


def _origin(url: httpx.URL) -> _Origin:
    return url.scheme, url.host, url.port  # httpx leaves a scheme's default port out


def _start(settings: _Settings, generated: _Generated, request: httpx.Request) -> _Call:
    """Begin the logical request `request`, and put its key in `request.extensions`.

    One request object is one operation: sent again to the same origin (by an `httpx.Auth`
    flow answering a 401, or `client.send(error.request)`), it keeps the key generated for
    it, with a new deadline; the redirect of a 307 or 308 to the same origin gets the key and
    the deadline of the request it redirects; any other request gets a new key. httpx raises
    an error with the request its client passed, `request`, so the key of a request that
    failed is in `error.request.extensions`. Its headers stay as they are.
    """
    origin, sent = _origin(request.url), generated.get(request)
    handed = request.extensions.get(_EXTENSION_HANDED_ON)
    kept: str | None = None
    started: float | None = None
    if sent is not None:  # this request sent again, not its redirect
        kept = sent[0] if sent[1] == origin else None
    elif isinstance(handed, _HandedOn) and (handed.origin, handed.method) == (
        origin,
        request.method,
    ):
        kept, started = handed.key, handed.started
    call = _Call.start(
        settings,
        method=request.method,
        url=str(request.url),
        caller_key=request.headers.get(settings.policy.key_header),
        # Only a body held in memory is known to be the same on every attempt.
        replayable=isinstance(request.stream, httpx.ByteStream),
        retried_error=_retried_error,
        kept_key=kept,
        started=started,
    )
    # A new dict, not one a redirect request shares: each request holds its own key, or none.
    ours = (EXTENSION_KEY, _EXTENSION_HANDED_ON)
    extensions = {k: v for k, v in request.extensions.items() if k not in ours}
    if call.key is not None:
        extensions[EXTENSION_KEY] = call.key
    request.extensions = extensions
    if call.generated_key is not None:
        generated[request] = (call.generated_key, origin)
    return call


def _attempt_request(call: _Call, request: httpx.Request) -> httpx.Request:
    """A copy of `request` for one attempt: the key added, timeouts cut to the time left.

    The cut timeouts bound each read and write; the attempt as a whole is bounded by the
    transports (a trickling server keeps every read within its timeout).

    The caller's request keeps its headers: a redirect the client follows gets its key from
    the `extensions` it shares with the request it redirects (see `_start`).
    """
    headers = request.headers.copy()
    if call.header_value is not None:
        headers[call.policy.key_header] = call.header_value
    remaining = call.remaining()
    timeouts: Mapping[str, float | None] = request.extensions.get("timeout", {})
    clipped: dict[str, float] = {}
    for name in ("connect", "read", "write", "pool"):
        value = timeouts.get(name)
        clipped[name] = remaining if value is None else min(remaining, value)
    return httpx.Request(
        request.method,
        request.url,
        headers=headers,
        stream=request.stream,
        extensions={**request.extensions, "timeout": clipped},
    )


def _finish(call: _Call, request: httpx.Request, response: httpx.Response) -> httpx.Response:
    """Mark `response` with the call's outcome; hand the key on to a redirect that keeps it."""
    location = response.headers.get("location")
    key = call.generated_key
    if key is not None and redirect_keeps_key(response.status_code, str(request.url), location):
        handed = _HandedOn(key, _origin(request.url), request.method, call.started)
        request.extensions[_EXTENSION_HANDED_ON] = handed
    response.extensions = {
        **response.extensions,
        EXTENSION_REPLAYED: is_replay(response, call.policy.replay_header),
        EXTENSION_KEY: call.key,
        EXTENSION_ATTEMPTS: call.attempts,
    }
    return response


def _close(response: httpx.Response) -> None:
    response.close()


def _begin(settings: _Settings, generated: _Generated, request: httpx.Request) -> _Call:
    """`_start`, and end a redirect that begins past the deadline it keeps: nothing is sent."""
    call = _start(settings, generated, request)
    if call.past_deadline():
        raise expired(call, request)
    return call


class IdempotentTransport(httpx.BaseTransport):
    """A sync httpx transport that attaches an Idempotency-Key once and retries safely.

    POST and PATCH get a UUIDv4 key (unless the caller set one) that every retry reuses, as do
    the same request sent again and its redirect by a 307 or 308 to the same origin; GET, HEAD,
    OPTIONS, TRACE, PUT and DELETE are retried without one; other methods are sent once.
    Connection errors, timeouts, and 409 (in flight), 429, 502, 503 and 504 are retried with
    full-jitter exponential backoff, honouring `Retry-After`; 400 and 422 never are.
    The response's `extensions` carry `idempotent_replayed` (bool), `idempotency_key` and
    `retrysafe_attempts`; the request's carry `idempotency_key` too, so that the key of a
    request that failed is in `error.request.extensions`. The body of a keyed answer that
    declares at most 1 MiB is read within the attempt, so a body cut off is retried too; so is
    a retried answer's, up to 1 MiB: past that, its connection is closed as the retry begins.

    Args:
        transport: the transport that sends each attempt; a new `httpx.HTTPTransport()` if None.
        policy: when and how to retry.
        on_retry: hooks called before each retry, for logging and metrics.
        observers: told of every attempt (`retrysafe.observe.Observer.attempted`), such as
            `PrometheusObserver()`; an exception they raise is logged and otherwise ignored.
        sleep: the function that waits between attempts (inject one in tests).
        clock: the clock of the total-time bound; monotonic time if None.
        rng: the random source of the jitter, for reproducible runs.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        on_retry: Sequence[RetryHook] = (),
        observers: Sequence[Observer] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport if transport is not None else httpx.HTTPTransport()
        self._settings = make_settings(policy, on_retry, clock, rng, observers)
        self._sleep = sleep
        self._generated: _Generated = weakref.WeakKeyDictionary()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`, retrying as the policy allows, and return the final response."""
        call = _begin(self._settings, self._generated, request)
        transport = self._transport
        if call.handling is Handling.PASSED:
            return _finish(call, request, call.once(lambda: transport.handle_request(request)))

        def send(sent: httpx.Request) -> httpx.Response:
            response = self._transport.handle_request(sent)
            # Reading a retried answer frees its connection for the retry (up to a cap: see
            # client/_bodies.py). A small body of a keyed answer is read here, so that a body
            # cut off is retried too.
            status, headers = response.status_code, response.headers
            if not call.retries_status(status, headers) and not reads_within(call, headers):
                return response
            return drained(response)

        last: list[httpx.Response] = []  # closed when another attempt follows it

        def attempt() -> httpx.Response:
            while last:
                last.pop().close()  # a retried answer read in part: its connection goes
            call.note_attempt()
            sent = _attempt_request(call, request)
            try:
                # B33: a blocking attempt cannot be cancelled; stop waiting for it at the
                # deadline (see client/_deadline.py), and bound the body the client reads.
                response = run_within(call.remaining(), lambda: send(sent), _close)
                if response is None:
                    raise expired(call, sent)
            except RETRIED_ERRORS as error:
                if isinstance(error, httpx.TimeoutException) and call.past_deadline():
                    raise expired(call, sent) from error  # its timeout, clipped to the bound
                if call.stream_stops():
                    raise call.not_replayable(error) from error
                raise
            if not isinstance(response.stream, httpx.ByteStream):
                response.stream = BoundedStream(response, call, sent)
            last.append(response)
            return response

        retrying = call.retrying(tenacity.Retrying, self._sleep)
        try:
            return _finish(call, request, retrying(attempt))
        except BaseException:
            while last:
                last.pop().close()
            raise

    def close(self) -> None:
        """Close the wrapped transport."""
        self._transport.close()


class AsyncIdempotentTransport(httpx.AsyncBaseTransport):
    """The async twin of `IdempotentTransport`, for `httpx.AsyncClient`.

    Args:
        transport: the transport that sends each attempt; a new `httpx.AsyncHTTPTransport()`
            if None.
        policy: when and how to retry.
        on_retry: hooks called before each retry, for logging and metrics.
        observers: told of every attempt (`retrysafe.observe.Observer.attempted`), such as
            `PrometheusObserver()`; an exception they raise is logged and otherwise ignored.
        sleep: the coroutine function that waits between attempts (inject one in tests).
        clock: the clock of the total-time bound; monotonic time if None.
        rng: the random source of the jitter, for reproducible runs.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        on_retry: Sequence[RetryHook] = (),
        observers: Sequence[Observer] = (),
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._settings = make_settings(policy, on_retry, clock, rng, observers)
        self._sleep = sleep
        self._generated: _Generated = weakref.WeakKeyDictionary()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request`, retrying as the policy allows, and return the final response."""
        call = _begin(self._settings, self._generated, request)
        if call.handling is Handling.PASSED:
            call.note_attempt()
            try:
                response = await self._transport.handle_async_request(request)
            except BaseException as error:
                call.log.last(None, error)
                raise
            call.log.last(response.status_code, None)
            return _finish(call, request, response)

        async def send(sent: httpx.Request) -> httpx.Response:
            response = await self._transport.handle_async_request(sent)
            status, headers = response.status_code, response.headers
            if call.retries_status(status, headers) or reads_within(call, headers):
                response = await adrained(response)
            if not isinstance(response.stream, httpx.ByteStream):
                response.stream = AsyncBoundedStream(response, call, sent)
            last.append(response)
            return response

        last: list[httpx.Response] = []  # closed when another attempt follows it

        async def attempt() -> httpx.Response:
            while last:
                await last.pop().aclose()  # a retried answer read in part: its connection goes
            call.note_attempt()
            sent = _attempt_request(call, request)
            try:
                with anyio.move_on_after(call.remaining()):  # B33: the attempt ends in time
                    return await send(sent)
                raise expired(call, sent)
            except RETRIED_ERRORS as error:
                if isinstance(error, httpx.TimeoutException) and call.past_deadline():
                    raise expired(call, sent) from error  # its timeout, clipped to the bound
                if call.stream_stops():
                    raise call.not_replayable(error) from error
                raise

        retrying = call.retrying(tenacity.AsyncRetrying, self._sleep)
        try:
            return _finish(call, request, await retrying(attempt))
        except BaseException:
            while last:
                await last.pop().aclose()
            raise

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await self._transport.aclose()
