# Generated from stores/_async/redis_waits.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""How the Redis stores wait for a record to settle: on the record's pub/sub channel.

The waiter subscribes first, then reads the record and marks it watched (so that its completion
publishes), so a completion between the two is seen; it reads again when woken, when the lease
would expire, and every `recheck` seconds, should a message be missed. A cancellation that
redis-py swallowed (one while it opens the pub/sub connection) ends the wait at the next read.

The wait ends by its deadline even if Redis stops answering (B15): each of its calls is cut
off then (`stores/_redis_cutoff.py`), rather than left to the client's `socket_timeout`. A
re-read cut off returns the record as last read, in flight: the wait timed out (409). A wait
that has read nothing by then (its subscription and first read get `FIRST_READ` seconds at
least, so a short wait on a live Redis is not cut off) learned nothing: the store is
unavailable (503, B20).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from redis import Redis
from redis.client import PubSub
from redis.exceptions import RedisError

from retrysafe._clock import Clock
from retrysafe._concurrency import cancelling, monotonic
from retrysafe._errors import StoreUnavailableError
from retrysafe._record import Record, State
from retrysafe.stores._redis_cutoff import CUT, Cutoff, Cut

__all__ = ["FIRST_READ", "Watch", "wait_on_channel"]

FIRST_READ = 0.5
"""Seconds a wait's subscription and first read may take, if its timeout is shorter."""


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
    lease has expired, or as last read once `timeout` seconds have passed; woken by `channel`'s
    messages. Raise `StoreUnavailableError` if Redis answered no read within the time."""
    started, before, cutoff = monotonic(), cancelling(), Cutoff()
    deadline, first_by = started + timeout, started + max(timeout, FIRST_READ)
    # redis-py types one face's pubsub() and the other's close(): hence the ignores.
    pubsub = client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
    subscribed = False
    try:
        subscribing = cutoff.call(first_by - monotonic(), lambda: pubsub.subscribe(channel))
        if isinstance(subscribing, Cut):
            raise _unanswered(timeout)
        subscribed = True
        # The confirmation: from here on, a completion is published to this waiter. Waited for
        # `recheck` at most: redis-py's sync read refuses a timeout above about 24.9 days, and
        # should the confirmation be late, the loop reads the record again every `recheck`.
        pubsub.get_message(timeout=max(0.0, min(first_by - monotonic(), recheck)))
        last: Record | Cut | None = CUT  # the record as last read
        while True:
            if cancelling() > before:  # swallowed by redis-py: not waited out until `timeout`
                raise asyncio.CancelledError
            read_by = first_by if isinstance(last, Cut) else deadline
            record = cutoff.call(read_by - monotonic(), watch)
            if isinstance(record, Cut):
                if isinstance(last, Cut):
                    raise _unanswered(timeout)
                return last  # in flight, its lease running: the wait timed out (B15)
            now, last = clock.now(), record
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
        cutoff.close(lambda: _leave(pubsub, subscribed=subscribed))


def _leave(pubsub: PubSub, *, subscribed: bool) -> None:
    """Unsubscribe (if subscribed) and close the waiter's pub/sub connection."""
    if subscribed:
        with contextlib.suppress(RedisError, OSError):
            # redis-py 8 left the sync PubSub.unsubscribe's parameters unannotated, so
            # mypy calls it untyped there; the async one is typed (hence unused-ignore).
            pubsub.unsubscribe()  # type: ignore[no-untyped-call, unused-ignore]
    pubsub.close()  # type: ignore[no-untyped-call, unused-ignore]


def _unanswered(timeout: float) -> StoreUnavailableError:
    """The error of a wait that Redis answered no read of within its time."""
    return StoreUnavailableError(
        f"Redis is unavailable: it answered no read of a wait within {max(timeout, FIRST_READ):g}"
        " s (the wait's timeout, or FIRST_READ if longer)"
    )
