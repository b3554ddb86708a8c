"""The response bodies of the httpx transports: read within the attempt, or bounded (SPEC B33).

A body is part of the answer: if the connection breaks while it arrives, the outcome is as
unknown as if no answer had come. So the body of an answer to a keyed request is read within
its attempt when its length is declared and small (`READ_WITHIN_MAX`), and a body cut off is
retried with the same key, as the requests adapter does. Any other body (large, of no declared
length such as a stream of events, or a request without a key) is handed to the caller's
client unread, cut at the total-time bound as it is read (`BoundedStream`).

The body of an answer that is retried (a 503, say) is read within its attempt too, so that its
connection can carry the retry, but only up to `READ_WITHIN_MAX` (`drained`): a body that goes
on past it (it may never end) is not read on, and its connection is closed, not reused, when
the retry begins. If no retry follows, the caller's client reads it whole: the part read, then
the rest (`ReadAhead`).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Final

import anyio
import httpx

from retrysafe.client._core import Handling, _Call
from retrysafe.client._deadline import shut_at, time_ran_out

__all__ = [
    "READ_WITHIN_MAX",
    "AsyncBoundedStream",
    "BoundedStream",
    "adrained",
    "buffered",
    "drained",
    "expired",
    "reads_within",
]

READ_WITHIN_MAX: Final = 1024 * 1024
"""The largest declared body (`Content-Length`, in bytes) read within a keyed attempt: 1 MiB,
the largest response a retrysafe server stores for replay by default (`max_response_size`)."""


def reads_within(call: _Call, headers: httpx.Headers) -> bool:
    """Whether the body of an answer to `call`, with `headers`, is read within its attempt.

    Only a keyed request's body is: a retry of it is a replay. Only a body of a declared length
    up to `READ_WITHIN_MAX` is: a body of no declared length may never end (a stream of events)
    and is the caller's to read as it arrives.
    """
    if call.handling is not Handling.KEYED or "transfer-encoding" in headers:
        return False
    length = headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= READ_WITHIN_MAX


def buffered(
    response: httpx.Response, body: httpx.SyncByteStream | httpx.AsyncByteStream
) -> httpx.Response:
    """A copy of `response` with `body`, the raw bytes read within the attempt (and the rest)."""
    # The raw bytes keep their Content-Encoding: the client decodes them as it would have.
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        stream=body,
        extensions=response.extensions,
    )


def drained(response: httpx.Response) -> httpx.Response:
    """`response` with its body read within the attempt, as a `ByteStream`, if it ends within
    `READ_WITHIN_MAX`; else with a `ReadAhead` body, its connection still open (SPEC B33)."""
    read: list[bytes] = []
    chunks = response.iter_raw()
    size = 0
    try:
        for chunk in chunks:
            read.append(chunk)
            size += len(chunk)
            if size > READ_WITHIN_MAX:
                return buffered(response, ReadAhead(response, read, chunks))
    except BaseException:
        response.close()
        raise
    response.close()
    return buffered(response, httpx.ByteStream(b"".join(read)))


async def adrained(response: httpx.Response) -> httpx.Response:
    """The async twin of `drained`."""
    read: list[bytes] = []
    chunks = response.aiter_raw()
    size = 0
    try:
        async for chunk in chunks:
            read.append(chunk)
            size += len(chunk)
            if size > READ_WITHIN_MAX:
                return buffered(response, AsyncReadAhead(response, read, chunks))
    except BaseException:
        await response.aclose()
        raise
    await response.aclose()
    return buffered(response, httpx.ByteStream(b"".join(read)))


class ReadAhead(httpx.SyncByteStream):
    """A body read in part within the attempt: the part read, then the rest as it comes."""

    def __init__(self, response: httpx.Response, read: list[bytes], rest: Iterator[bytes]) -> None:
        self._response, self._read, self._rest = response, read, rest

    def __iter__(self) -> Iterator[bytes]:
        """Yield the part read, then the rest."""
        while self._read:
            yield self._read.pop(0)
        yield from self._rest

    def close(self) -> None:
        """Close the response, and its connection if the body is not at its end."""
        self._response.close()


class AsyncReadAhead(httpx.AsyncByteStream):
    """The async twin of `ReadAhead`."""

    def __init__(
        self, response: httpx.Response, read: list[bytes], rest: AsyncIterator[bytes]
    ) -> None:
        self._response, self._read, self._rest = response, read, rest

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the part read, then the rest."""
        while self._read:
            yield self._read.pop(0)
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        """Close the response, and its connection if the body is not at its end."""
        await self._response.aclose()


def expired(call: _Call, request: httpx.Request) -> httpx.ReadTimeout:
    """The error of an attempt, or a body read, cut at the total-time bound: never retried."""
    return httpx.ReadTimeout(time_ran_out(call), request=request)


def _socket_of(response: httpx.Response) -> socket.socket | None:
    """The socket of an HTTP/1.1 response, to shut down at the deadline; None otherwise.

    An HTTP/2 connection carries other requests' streams too, so it is never shut down.
    """
    stream = response.extensions.get("network_stream")
    if stream is None or response.extensions.get("http_version") != b"HTTP/1.1":
        return None
    sock = stream.get_extra_info("socket")
    return sock if isinstance(sock, socket.socket) else None


def _nothing() -> None:
    pass


class BoundedStream(httpx.SyncByteStream):
    """A response body that the caller's client reads, cut at the deadline (SPEC B33).

    The deadline is checked between chunks (a trickle), and the connection is shut down at the
    deadline, which wakes a read blocked on a stalled body.
    """

    def __init__(self, response: httpx.Response, call: _Call, request: httpx.Request) -> None:
        assert isinstance(response.stream, httpx.SyncByteStream)  # noqa: S101 -- sync transport
        self._stream = response.stream
        self._socket = _socket_of(response)
        self._call = call
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        """Yield the body's chunks until it ends or the deadline passes."""
        sock = self._socket
        disarm = shut_at(self._call.remaining(), sock) if sock is not None else _nothing
        try:
            for chunk in self._stream:
                if self._call.past_deadline():
                    break
                yield chunk
            else:
                return
        except httpx.TransportError as error:
            if not self._call.past_deadline():
                raise
            raise expired(self._call, self._request) from error
        finally:
            disarm()
        raise expired(self._call, self._request)

    def close(self) -> None:
        """Close the wrapped stream."""
        self._stream.close()


class AsyncBoundedStream(httpx.AsyncByteStream):
    """The async twin of `BoundedStream`: each read is cancelled at the deadline."""

    def __init__(self, response: httpx.Response, call: _Call, request: httpx.Request) -> None:
        assert isinstance(response.stream, httpx.AsyncByteStream)  # noqa: S101 -- async transport
        self._stream = response.stream
        self._call = call
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """Yield the body's chunks until it ends or the deadline passes."""
        chunks = aiter(self._stream)
        while True:
            with anyio.move_on_after(self._call.remaining()) as scope:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            if scope.cancelled_caught or self._call.past_deadline():
                raise expired(self._call, self._request)
            yield chunk

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self._stream.aclose()
