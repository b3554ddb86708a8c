"""httpx transports that inject network faults, to test a client's retries against a real server.

They wrap a real transport (STYLE 8) and apply a schedule of faults to successive requests:

    transport = FaultyTransport(httpx.HTTPTransport(), [Fault.LOSE_RESPONSE, Fault.TIMEOUT])
    client = httpx.Client(transport=IdempotentTransport(transport))

The first request reaches the server and its answer is lost; the second times out before it is
sent; every later request passes through.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import httpx

__all__ = ["AsyncFaultyTransport", "Fault", "FaultyTransport", "InjectedFault"]


class Fault(enum.Enum):
    """A network fault, and whether the server sees the request."""

    LOSE_RESPONSE = "lose_response"
    """The server receives the request and answers; the answer is lost (`httpx.ReadError`)."""
    TIMEOUT = "timeout"
    """The request times out before it is sent; the server never sees it
    (`httpx.ConnectTimeout`)."""
    RESET = "reset"
    """The connection is reset before the request is sent; the server never sees it
    (`httpx.ConnectError`)."""


@dataclass(frozen=True, slots=True)
class InjectedFault:
    """A fault a transport injected: which, into which request, and if the server saw it."""

    fault: Fault
    method: str
    url: str
    reached_server: bool


def _error(fault: Fault, request: httpx.Request) -> httpx.TransportError:
    where = f"{request.method} {request.url} (injected by retrysafe.testing)"
    if fault is Fault.LOSE_RESPONSE:
        return httpx.ReadError(f"response lost after the server answered {where}", request=request)
    if fault is Fault.TIMEOUT:
        return httpx.ConnectTimeout(f"timed out before sending {where}", request=request)
    return httpx.ConnectError(f"connection reset by peer before sending {where}", request=request)


class _Schedule:
    """The faults still to inject, taken in order by the requests `when` selects."""

    def __init__(
        self, faults: Iterable[Fault | None], when: Callable[[httpx.Request], bool] | None
    ) -> None:
        self._faults = list(faults)
        self._when = when
        self._lock = threading.Lock()
        self.injected: list[InjectedFault] = []
        """Every fault injected so far, in order."""

    def next(self, request: httpx.Request) -> Fault | None:
        """The fault for this request (None: pass it through), recorded as injected."""
        if self._when is not None and not self._when(request):
            return None
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
            if fault is not None:
                reached = fault is Fault.LOSE_RESPONSE
                self.injected.append(
                    InjectedFault(fault, request.method, str(request.url), reached)
                )
        return fault

    @property
    def pending(self) -> int:
        """How many scheduled entries are still to come."""
        with self._lock:
            return len(self._faults)


TransportT = TypeVar("TransportT", httpx.BaseTransport, httpx.AsyncBaseTransport)


class _Injecting(Generic[TransportT]):
    """What both transports hold: the real transport and the schedule of faults."""

    def __init__(
        self,
        transport: TransportT,
        faults: Iterable[Fault | None] = (),
        *,
        when: Callable[[httpx.Request], bool] | None = None,
    ) -> None:
        self._transport: TransportT = transport
        self._schedule = _Schedule(faults, when)
        self.injected = self._schedule.injected
        """Every fault injected so far (`InjectedFault`), in order."""

    @property
    def pending(self) -> int:
        """How many scheduled entries are still to come."""
        return self._schedule.pending


class FaultyTransport(_Injecting[httpx.BaseTransport], httpx.BaseTransport):
    """A sync httpx transport that injects `faults` into successive requests.

    Args:
        transport: the real transport the requests go through (`httpx.HTTPTransport()`,
            `httpx.WSGITransport(app=...)`).
        faults: one entry per request, in order: a `Fault`, or None to let that request pass.
            Requests after the last entry pass through.
        when: which requests take an entry (all by default), such as
            `lambda request: request.method == "POST"`.
    """

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the real transport, unless its fault says otherwise."""
        fault = self._schedule.next(request)
        if fault is None:
            return self._transport.handle_request(request)
        if fault is Fault.LOSE_RESPONSE:
            response = self._transport.handle_request(request)
            try:
                response.read()  # the server finished; only the client never hears of it
            finally:
                response.close()
        raise _error(fault, request)

    def close(self) -> None:
        """Close the real transport."""
        self._transport.close()


class AsyncFaultyTransport(_Injecting[httpx.AsyncBaseTransport], httpx.AsyncBaseTransport):
    """An async httpx transport that injects `faults` into successive requests.

    Arguments as for `FaultyTransport`, with an async `transport` (`httpx.AsyncHTTPTransport()`,
    `httpx.ASGITransport(app=...)`).
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` through the real transport, unless its fault says otherwise."""
        fault = self._schedule.next(request)
        if fault is None:
            return await self._transport.handle_async_request(request)
        if fault is Fault.LOSE_RESPONSE:
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()  # the server finished; only the client never hears of it
            finally:
                await response.aclose()
        raise _error(fault, request)

    async def aclose(self) -> None:
        """Close the real transport."""
        await self._transport.aclose()
