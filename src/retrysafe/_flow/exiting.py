"""Held outcomes at interpreter exit (B19, B40): the sync flows' holder thread is a daemon, so
an outcome still held when the process ends would die with it, silently. `drain_held` runs at
exit (and from a server's shutdown hook): it waits for them to be stored, and logs each one it
could not store as `held_lost`. The holder's thread runs their steps meanwhile, each on a thread
of its own, or on its own thread where none can start (Python 3.12 at exit: `_heartbeat`).
"""

from __future__ import annotations

import atexit
import weakref
from typing import TYPE_CHECKING, Any, Final

from retrysafe._concurrency import monotonic

if TYPE_CHECKING:
    from retrysafe._flow.holding import Holder

__all__ = ["HOLDERS", "drain_held"]


HOLDERS: Final[weakref.WeakSet[Holder[Any]]] = weakref.WeakSet()
"""The flows of this process that have held an outcome: what `drain_held` looks at."""


def drain_held(timeout: float | None = None) -> bool:
    """Drain every sync flow of this process that holds outcomes (B19, B40): try each at once
    and wait up to `timeout` seconds in all (None: the largest of their `drain_timeout`s) for
    them to be stored; return whether none is left. What is left is logged, each as `held_lost`:
    nothing is released, each key stays in flight until its lease ends. It runs by itself at
    interpreter exit; a server's shutdown hook (gunicorn's `worker_exit`) may call it earlier.
    Async flows drain on their event loop (the ASGI lifespan shutdown), not here."""
    holding = [
        (holder, drain)
        for holder in list(HOLDERS)
        if (drain := getattr(holder, "drain", None)) is not None and holder.holdings.held_any()
    ]
    if timeout is None:
        timeout = max((holder.drain_timeout for holder, _ in holding), default=0.0)
    deadline = monotonic() + timeout
    for holder, _ in holding:
        holder.nudge_all()
    for holder, drain in holding:
        drain(max(deadline - monotonic(), 0.0))
        for held in holder.holdings.all():
            holder.lost(held)
    return not any(holder.holdings.held_any() for holder, _ in holding)


atexit.register(drain_held)
