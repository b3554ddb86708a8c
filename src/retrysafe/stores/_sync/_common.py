# Generated from stores/_async/_common.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Shared behaviour of the async stores, generated into the sync faces."""

from __future__ import annotations

from retrysafe._concurrency import sleep, monotonic
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import Store, poll_delays

__all__ = ["poll_until_settled"]


def poll_until_settled(
    store: Store, identity: Identity, timeout: float
) -> Record | None:
    """Poll `store` with growing delays until the record is not in flight under a live lease.

    For stores with no notification mechanism (memory, SQLite); bounded by `timeout` (B15).
    """
    deadline = monotonic() + timeout
    delays = poll_delays()
    while True:
        record = store.get(identity)
        if (
            record is None
            or record.state is not State.IN_FLIGHT
            or record.lease_expires_at <= store.clock.now()
        ):
            return record
        remaining = deadline - monotonic()
        if remaining <= 0:
            return record
        sleep(min(next(delays), remaining))
