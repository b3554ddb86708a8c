"""What the HTTP servers of the CLI (`retrysafe proxy`, `retrysafe console`) share against slow
clients: uvicorn's h11 protocol with a bound on each request head and on a stalled response.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that
never sent a request (it waits for a first byte for ever), and any byte resets its idle clock:
a slowloris holding hundreds of such connections locks everyone else out (B36).
"""

from __future__ import annotations

import asyncio
from typing import Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_HEAD_TIMEOUT", "HeadTimeoutProtocol"]

DEFAULT_HEAD_TIMEOUT: Final = 30.0
"""Seconds a client has to send a whole request head, unless told otherwise."""


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, where a client must send each request head within
    `head_timeout` seconds of the connection's start or of the previous response (uvicorn
    bounds only an idle connection, and any byte resets that): a slowloris sending its head
    byte by byte is closed too (B36). A client that takes none of its response for as long
    has its connection aborted: else it holds the connection, and the graceful shutdown, for
    as long as it likes (B40). A request body's pace is the app's to bound, until the app has
    answered: a body still unfinished `head_timeout` seconds after the answer (the app
    refused the request before reading it all) has its connection closed, however it trickles
    in (uvicorn drops those bytes, and each of them resets its idle clock)."""

    head_timeout: float = DEFAULT_HEAD_TIMEOUT
    _head_timer: asyncio.TimerHandle | None = None
    _stall_timer: asyncio.TimerHandle | None = None

    @classmethod
    def bounded(cls, seconds: float) -> type[HeadTimeoutProtocol]:
        """Return the protocol with `head_timeout = seconds`."""
        return type(cls.__name__, (cls,), {"head_timeout": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Accept the connection and start the clock on its first request head."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Take the bytes; stop the clock once they complete a request head (not while they
        are the rest of a body whose request was answered)."""
        super().data_received(data)
        if self._head_timer is not None and not self._waiting():
            self._head_timer.cancel()
            self._head_timer = None

    def on_response_complete(self) -> None:
        """Finish the response; start the clock on the next request head."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def pause_writing(self) -> None:
        """Hold the response until the client takes more of it; abort the connection if it
        takes none within `head_timeout`."""
        super().pause_writing()
        if self._stall_timer is None:
            self._stall_timer = self.loop.call_later(self.head_timeout, self.transport.abort)

    def resume_writing(self) -> None:
        """Go on with the response: the client took some of it."""
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the clocks with the connection."""
        for timer in (self._head_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _waiting(self) -> bool:
        """Whether the connection waits on the client alone: for a request head, or for the
        rest of a body whose request was answered."""
        return self.conn.their_state is h11.IDLE or self.conn.our_state is h11.DONE

    def _head_late(self) -> None:
        self._head_timer = None
        if self._waiting() and not self.transport.is_closing():
            self.transport.close()
