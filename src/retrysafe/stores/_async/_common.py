"""Shared behaviour of the async stores, generated into the sync faces."""

from __future__ import annotations

from retrysafe._concurrency import asleep, monotonic
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import AsyncStore, poll_delays

__all__ = ["poll_until_settled"]


async def poll_until_settled(
    store: AsyncStore, identity: Identity, timeout: float
) -> Record | None:
    """Poll `store` with growing delays until the record is not in flight under a live lease.

    For stores with no notification mechanism (memory, SQLite); bounded by `timeout` (B15).
    """
    deadline = monotonic() + timeout
    delays = poll_delays()
    while True:
        record = await store.get(identity)
        if (
            record is None
            or record.state is not State.IN_FLIGHT
            or record.lease_expires_at <= store.clock.now()
        ):
            return record
        remaining = deadline - monotonic()
        if remaining <= 0:
            return record
        await asleep(min(next(delays), remaining))
