# Generated from stores/_async/_common.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Shared behaviour of the async stores, generated into the sync faces."""

from __future__ import annotations

from retrysafe._concurrency import Wakeups, monotonic
from retrysafe._record import Identity, Record
from retrysafe.stores.base import Store, poll_delays, running

__all__ = ["poll_until_settled"]


def poll_until_settled(
    store: Store, identity: Identity, timeout: float, *, wakeups: Wakeups | None = None
) -> Record | None:
    """Poll `store` with growing delays until the record is not in flight under a live lease.

    For stores with no notification across processes (memory, SQLite, MySQL); bounded by
    `timeout` (B15). A wake-up on `wakeups` for the record's digest (a settlement made in this
    process) ends the pause at once: the waiter watches before each read, so none is missed.
    """
    deadline = monotonic() + timeout
    delays = poll_delays()
    key = identity.digest()
    wakeups = Wakeups() if wakeups is None else wakeups  # none given: nothing wakes it early
    while True:
        woken = wakeups.watch(key)  # before the read: a settlement after it wakes the waiter
        try:
            record = store.get(identity)
            remaining = deadline - monotonic()
            if not running(record, store.clock.now()) or remaining <= 0:
                return record
            wakeups.until(woken, min(next(delays), remaining))
        finally:
            wakeups.unwatch(key, woken)
