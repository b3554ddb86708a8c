# Generated from stores/_async/redis_waits.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""How the Redis stores wait for a record to settle: on the record's pub/sub channel.

The waiter subscribes first, then reads the record and marks it watched (so that its completion
publishes), so a completion between the two is seen; it reads again when woken, when the lease
would expire, and every `recheck` seconds, should a message be missed. A cancellation that
redis-py swallowed (one while it opens the pub/sub connection) ends the wait at the next read.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from redis import Redis
from redis.exceptions import RedisError

from retrysafe._clock import Clock
from retrysafe._concurrency import cancelling, monotonic
from retrysafe._record import Record, State

__all__ = ["Watch", "wait_on_channel"]


class Watch(Protocol):
    """Reads a record and marks it watched, so that its completion publishes on its channel."""

    def __call__(self) -> Record | None:
        """Return the live record, or None."""
        ...


def wait_on_channel(
    client: Redis,
    channel: bytes,
    watch: Watch,
    *,
    clock: Clock,
    timeout: float,
    recheck: float,
) -> Record | None:
    """Return the record `watch` reads (and marks watched) once it is settled, gone, or its
    lease has expired, or as it is after `timeout` seconds; woken by `channel`'s messages."""
    deadline, before = monotonic() + timeout, cancelling()
    # redis-py types one face's pubsub() and the other's close(): hence the ignores.
    pubsub = client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
    subscribed = False
    try:
        pubsub.subscribe(channel)
        subscribed = True
        # The confirmation: from here on, a completion is published to this waiter. Waited for
        # `recheck` at most: redis-py's sync read refuses a timeout above about 24.9 days, and
        # should the confirmation be late, the loop reads the record again every `recheck`.
        pubsub.get_message(timeout=min(timeout, recheck))
        while True:
            if cancelling() > before:  # swallowed by redis-py: not waited out until `timeout`
                raise asyncio.CancelledError
            record = watch()
            now = clock.now()
            if (
                record is None
                or record.state is not State.IN_FLIGHT
                or record.lease_expires_at <= now
            ):
                return record
            remaining = deadline - monotonic()
            if remaining <= 0:
                return record
            pause = min(remaining, record.lease_expires_at - now, recheck)
            pubsub.get_message(ignore_subscribe_messages=True, timeout=pause)
    finally:
        if subscribed:
            with contextlib.suppress(RedisError, OSError):
                # redis-py 8 left the sync PubSub.unsubscribe's parameters unannotated, so
                # mypy calls it untyped there; the async one is typed (hence unused-ignore).
                pubsub.unsubscribe()  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.close()  # type: ignore[no-untyped-call, unused-ignore]
