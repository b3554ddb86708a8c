"""What the serving commands (`serve-demo`, `proxy`) share: how Ctrl+C stops them.

Ctrl+C (SIGINT) or SIGTERM is a server's normal way to stop: uvicorn finishes the requests in
progress and runs the lifespan's shutdown (the store is closed), then the command exits 0.
uvicorn itself raises the signal again once it has stopped, so that the process would exit
130 on Ctrl+C and die of SIGTERM; `GracefulServer` does not. A second Ctrl+C while it drains
stops waiting for the requests in progress, as in uvicorn.

A server's first line is its address: `keep_interrupts`, called just before it is printed, makes
a Ctrl+C sent from then on a graceful stop once serving starts. Left to raise KeyboardInterrupt
there, one that landed in a garbage collection's weakref callback would be reported and dropped,
and the server would serve on.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Any

import uvicorn

from retrysafe._sockets import listen
from retrysafe.cli._common import fail

__all__ = ["GracefulServer", "listening"]


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose `serve` returns normally after a graceful stop on a signal."""

    _kept: list[int] | None = None
    _before: Any = None

    def keep_interrupts(self) -> None:
        """Record Ctrl+C from now (main thread) and act on it once the server serves."""
        kept: list[int] = []
        self._kept = kept
        self._before = signal.signal(signal.SIGINT, lambda sig, _: kept.append(sig))

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers; a Ctrl+C that `keep_interrupts` recorded starts the stop."""
        with super().capture_signals():
            for sig in self._kept or ():
                self.handle_exit(sig, None)
            yield
        if self._kept is not None:
            signal.signal(signal.SIGINT, self._before)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start the graceful shutdown (a second Ctrl+C: at once), without keeping the signal
        to raise again once stopped."""
        del frame
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def listening(host: str, port: int) -> socket.socket:
    """Return a socket listening on (host, port); fail (exit 1) in one line if it cannot be."""
    try:
        return listen(host, port)
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}")
