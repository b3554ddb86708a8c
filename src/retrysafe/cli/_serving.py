"""What the serving commands (`serve-demo`, `proxy`) share: how Ctrl+C stops them.

Ctrl+C (SIGINT) or SIGTERM is a server's normal way to stop: uvicorn finishes the requests in
progress and runs the lifespan's shutdown (the store is closed), then the command exits 0.
uvicorn itself raises the signal again once it has stopped, so that the process would exit
130 on Ctrl+C and die of SIGTERM; `GracefulServer` does not. A second Ctrl+C while it drains
stops waiting for the requests in progress, as in uvicorn.
"""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn

__all__ = ["GracefulServer"]


class GracefulServer(uvicorn.Server):
    """uvicorn's server, whose `serve` returns normally after a graceful stop on a signal."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Start the graceful shutdown (a second Ctrl+C: at once), without keeping the signal
        to raise again once stopped."""
        del frame
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
