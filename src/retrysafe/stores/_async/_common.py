"""Shared behaviour of the async stores, generated into the sync faces."""

from __future__ import annotations

from retrysafe._concurrency import AsyncWakeups, monotonic
from retrysafe._record import Identity, Record
from retrysafe.stores.base import AsyncStore, poll_delays, running

__all__ = ["poll_until_settled"]


async def poll_until_settled(
    store: AsyncStore, identity: Identity, timeout: float, *, wakeups: AsyncWakeups | None = None
) -> Record | None:
    """Poll `store` with growing delays until the record is not in flight under a live lease.

    For stores with no notification across processes (memory, SQLite, MySQL); bounded by
    `timeout` (B15). A wake-up on `wakeups` for the record's digest (a settlement made in this
    process) ends the pause at once: the waiter watches before each read, so none is missed.
    """
    deadline = monotonic() + timeout
    delays = poll_delays()
    key = identity.digest()
    wakeups = AsyncWakeups() if wakeups is None else wakeups  # none given: nothing wakes it early
    while True:
        woken = wakeups.watch(key)  # before the read: a settlement after it wakes the waiter
        try:
            record = await store.get(identity)
            remaining = deadline - monotonic()
            if not running(record, store.clock.now()) or remaining <= 0:
                return record
            await wakeups.until(woken, min(next(delays), remaining))
        finally:
            wakeups.unwatch(key, woken)
