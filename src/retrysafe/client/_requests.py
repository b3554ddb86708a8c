"""A requests adapter that attaches an Idempotency-Key once and retries safely (SPEC B32-B33).

    session = requests.Session()
    session.mount("https://", IdempotentAdapter())
    session.mount("http://", IdempotentAdapter())

requests is an optional dependency: this module is imported only when `IdempotentAdapter` is.
"""

from __future__ import annotations

import random
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import requests
import requests.adapters
import tenacity
from requests.exceptions import ChunkedEncodingError, ReadTimeout, SSLError, Timeout

from retrysafe._clock import Clock
from retrysafe.client._bodies import READ_WITHIN_MAX
from retrysafe.client._core import (
    DEFAULT_POLICY,
    Handling,
    RetryHook,
    RetryPolicy,
    _Call,
    make_settings,
)
from retrysafe.client._deadline import run_within, time_ran_out
from retrysafe.client._headers import key_content
from retrysafe.client._urls import redirect_keeps_key, same_origin
from retrysafe.observe import Observer

__all__ = ["IdempotentAdapter"]

_Timeout = float | tuple[float, float] | tuple[float, None] | None
_Cert = bytes | str | tuple[bytes | str, bytes | str] | None


def _retried_error(error: BaseException) -> bool:
    # A certificate problem will not fix itself; every other connection failure, timeout or
    # broken body leaves the outcome unknown, which the key makes safe to retry.
    if isinstance(error, SSLError):
        return False
    return isinstance(error, requests.ConnectionError | Timeout | ChunkedEncodingError)


def _clip(timeout: _Timeout, remaining: float) -> _Timeout:
    """Cut the connect and read timeouts to the time left in the total-time bound."""
    if timeout is None:
        return (remaining, remaining)
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (
            remaining if connect is None else min(connect, remaining),
            remaining if read is None else min(read, remaining),
        )
    if isinstance(timeout, int | float):
        return min(float(timeout), remaining)
    return timeout  # a urllib3 Timeout object: the caller's exact wish, left as it is


def _expired(call: _Call, request: requests.PreparedRequest) -> ReadTimeout:
    return ReadTimeout(time_ran_out(call), request=request)


def _close(response: requests.Response) -> None:
    response.close()


class _ReadAhead:
    """The raw body of a retried answer read in part within its attempt (requests decodes it
    as it reads): the part read, then the rest, to a caller that reads it (SPEC B33)."""

    def __init__(self, raw: Any, read: list[bytes], rest: Iterator[bytes]) -> None:
        self._raw, self._read, self._rest = raw, read, rest

    def stream(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        """Yield the part read, then the rest (what `Response.iter_content` reads)."""
        while self._read:
            yield self._read.pop(0)
        yield from self._rest

    def read(self, amt: int | None = None, *args: object, **kwargs: object) -> bytes:
        """Up to `amt` bytes (all if None) of the body, decoded, as `stream` yields them."""
        parts, size = self._read, sum(map(len, self._read))
        while amt is None or size < amt:
            chunk = next(self._rest, None)
            if chunk is None:
                break
            parts.append(chunk)
            size += len(chunk)
        data = b"".join(parts)
        self._read = [data[amt:]] if amt is not None and size > amt else []
        return data if amt is None else data[:amt]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


def _drained(response: requests.Response) -> requests.Response:
    """Read the body of a retried answer, which frees its connection for the retry, if it
    ends within `READ_WITHIN_MAX`; a body that goes on is left to be read later, and its
    connection is closed if a retry follows (not reused)."""
    read: list[bytes] = []
    size = 0
    chunks = response.iter_content(64 * 1024)
    try:
        for chunk in chunks:
            read.append(chunk)
            size += len(chunk)
            if size > READ_WITHIN_MAX:
                response.raw = _ReadAhead(response.raw, read, chunks)
                return response
    except BaseException:
        response.close()
        raise
    response._content = b"".join(read)  # as `Response.content` keeps what it read
    response.close()
    return response


def _read_on(call: _Call, response: requests.Response, request: requests.PreparedRequest) -> None:
    """Read the rest of the last answer, a retried one read in part, as the session would
    (`stream=False`), within the total-time bound."""
    if run_within(call.remaining(), lambda: response.content, lambda _: None) is None:
        response.close()
        raise _expired(call, request)


class _HandedOn(str):
    """The key header a keyed request answered with a 307 or 308 to the same origin hands on
    to its redirect (client/_urls.py).

    requests builds each redirect as a copy of the request the adapter was given, so the
    header is put on that request. Being of its own class, it survives the copy as the same
    object, and the adapter tells it from a key the caller set: it takes it off, from the copy
    and from the request it was put on, and keeps it only for a request of the same method to
    the same origin, so that a generated key never goes to another origin, nor stays on the
    caller's request once its redirect went. The redirect (a copy) also keeps the deadline of
    the request it redirects, which began at `started` (SPEC B33); the request it was put on,
    sent again, keeps the key with a new deadline.
    """

    method: str
    url: str
    owner: weakref.ref[requests.PreparedRequest]
    started: float

    @classmethod
    def on(cls, request: requests.PreparedRequest, header: str, value: str, started: float) -> None:
        """Put `value` on `request` as the key its redirect keeps."""
        handed = cls(value)
        handed.method, handed.url = request.method or "", request.url or ""
        handed.owner, handed.started = weakref.ref(request), started
        request.headers[header] = handed


def _take_handed_on(
    request: requests.PreparedRequest, header: str
) -> tuple[str | None, float | None]:
    """Remove a key handed on to `request` from its headers, and from the request it was put
    on; return the key if `request` has that one's method and origin, else None, and the
    start of its deadline if `request` is the redirect (a copy), else None."""
    value = request.headers.get(header)
    if not isinstance(value, _HandedOn):
        return None, None
    del request.headers[header]
    owner = value.owner()
    if owner is not None and owner is not request and owner.headers.get(header) is value:
        del owner.headers[header]
    if request.method != value.method or not same_origin(request.url or "", value.url):
        return None, None
    return key_content(value), None if owner is request else value.started


class IdempotentAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter with the behaviour of `IdempotentTransport`.

    POST and PATCH get a UUIDv4 key (unless the caller set one) that every retry reuses, as
    does the redirect requests follows for a 307 or 308 to the same origin; safe and idempotent
    methods are retried without one; other methods are sent once.
    Whether a response is a replay: `retrysafe.client.is_replay(response)`.

    Args:
        policy: when and how to retry.
        on_retry: hooks called before each retry, for logging and metrics.
        observers: told of every attempt (`retrysafe.observe.Observer.attempted`), such as
            `PrometheusObserver()`; an exception they raise is logged and otherwise ignored.
        sleep: the function that waits between attempts (inject one in tests).
        clock: the clock of the total-time bound; monotonic time if None.
        rng: the random source of the jitter, for reproducible runs.
        pool_connections: as for `requests.adapters.HTTPAdapter`.
        pool_maxsize: as for `requests.adapters.HTTPAdapter`.
        pool_block: as for `requests.adapters.HTTPAdapter`.
    """

    def __init__(
        self,
        *,
        policy: RetryPolicy = DEFAULT_POLICY,
        on_retry: Sequence[RetryHook] = (),
        observers: Sequence[Observer] = (),
        sleep: Callable[[float], None] = time.sleep,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        pool_connections: int = 10,
        pool_maxsize: int = 10,
        pool_block: bool = False,
    ) -> None:
        # urllib3's own retries stay off: they would not know which requests are safe to repeat.
        super().__init__(
            pool_connections=pool_connections,
            pool_maxsize=pool_maxsize,
            max_retries=0,
            pool_block=pool_block,
        )
        self._settings = make_settings(policy, on_retry, clock, rng, observers)
        self._sleep = sleep

    def send(  # noqa: PLR0917 -- requests' own signature, called positionally
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: _Timeout = None,
        verify: bool | str = True,
        cert: _Cert = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send `request`, retrying as the policy allows, and return the final response."""
        policy = self._settings.policy
        handed_on, started = _take_handed_on(request, policy.key_header)
        call = _Call.start(
            self._settings,
            method=request.method or "GET",
            url=request.url or "",
            caller_key=request.headers.get(policy.key_header),
            replayable=request.body is None or isinstance(request.body, bytes | str),
            retried_error=_retried_error,
            kept_key=handed_on,
            started=started,
        )
        if call.past_deadline():  # a redirect begun past the deadline it keeps: not sent
            raise _expired(call, request)
        send = super().send
        if call.handling is Handling.PASSED:
            return call.once(lambda: send(request, stream, timeout, verify, cert, proxies))
        prepared = request.copy()
        if call.header_value is not None:
            prepared.headers[policy.key_header] = call.header_value

        def send_and_read(clipped: _Timeout) -> requests.Response:
            response = send(prepared, stream, clipped, verify, cert, proxies)
            if call.retries_status(response.status_code, response.headers):
                return _drained(response)  # up to a cap (client/_bodies.py)
            if not stream:
                _ = response.content  # read here, as the session would, so the bound covers it
            return response

        def send_within() -> requests.Response:
            left = call.remaining()
            clipped = _clip(timeout, left)
            # B33: a blocking attempt cannot be cancelled; stop waiting for it at the deadline
            # (client/_deadline.py). A response that comes late is closed, never returned.
            response = run_within(left, lambda: send_and_read(clipped), _close)
            if response is None:
                raise _expired(call, prepared)
            return response

        last: list[requests.Response] = []  # closed when another attempt follows it

        def attempt() -> requests.Response:
            while last:
                last.pop().close()  # a retried answer read in part: its connection goes
            call.note_attempt()
            try:
                response = send_within()
            except Exception as error:
                if isinstance(error, Timeout) and call.past_deadline():
                    # The socket timeout, clipped to the bound, fired first: the bound ended it.
                    raise _expired(call, prepared) from error
                if _retried_error(error) and call.stream_stops():
                    raise call.not_replayable(error) from error
                raise
            last.append(response)
            return response

        retrying = call.retrying(tenacity.Retrying, self._sleep)
        try:
            response: requests.Response = retrying(attempt)
            if not stream and isinstance(response.raw, _ReadAhead):
                _read_on(call, response, prepared)
        except BaseException:
            while last:
                last.pop().close()
            raise
        location = response.headers.get("location")
        if call.header_value is not None and redirect_keeps_key(
            response.status_code, request.url or "", location
        ):
            _HandedOn.on(request, policy.key_header, call.header_value, call.started)
        return response
