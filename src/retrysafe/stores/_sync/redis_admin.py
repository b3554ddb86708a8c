# Generated from stores/_async/redis_admin.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The Redis store's admin operations: they SCAN the store's keys, O(records).

Meant for the `retrysafe keys` CLI and periodic jobs, not for request paths. Each takes the
client and the store's key space (`space`); the store maps Redis errors around the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Callable
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script

from retrysafe._record import Record
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores.base import Listing, StoreStats

__all__ = ["list_records", "purge_expired", "stats"]

_SCAN_COUNT = 1000

Key = bytes | str  # a key as redis-py types the reply to SCAN


def purge_expired(
    redis: Redis, space: lua.KeySpace, purge: Script, *, now: float, limit: int
) -> int:
    """Delete at most `limit` records past their retention, SCANning in batches."""
    purged = 0
    if limit <= 0:
        return purged
    for keys, expiries in _scan(redis, space, _read_expiry):
        expired = [
            key
            for key, expires_at in zip(keys, expiries, strict=True)
            if expires_at is not None and float(expires_at) <= now
        ][: limit - purged]
        if expired:
            # Deleted one by one by a script that checks again: a record claimed
            # anew since the read above is live and stays.
            deletes = redis.pipeline(transaction=False)
            for key in expired:
                purge(keys=(key,), args=(now,), client=deletes)
            purged += sum(deletes.execute())
        if purged >= limit:
            break
    return purged


def list_records(
    redis: Redis, space: lua.KeySpace, listing: Listing, *, now: float
) -> list[Record]:
    """Return the live records `listing` asks for, newest first."""
    matching: list[Record] = []
    for _, hashes in _scan(redis, space, _read_record):
        for fields in hashes:
            if not fields:
                continue  # expired or deleted since the SCAN
            record = lua.record_from_fields(fields)
            if record.expires_at > now and listing.matches(record):
                matching.append(record)
    return listing.newest(matching)


def stats(redis: Redis, space: lua.KeySpace, *, now: float) -> StoreStats:
    """Return counts of live records (outcomes are sized, not read)."""
    in_flight: list[float] = []
    done = 0
    bytes_stored = 0
    for _, replies in _scan(redis, space, _read_stats):
        for (state, created_at, expires_at), size in zip(replies[::2], replies[1::2], strict=True):
            if expires_at is None or float(expires_at) <= now:
                continue
            bytes_stored += size
            if state == b"in_flight":
                in_flight.append(float(created_at))
            else:
                done += 1
    return StoreStats(
        in_flight=len(in_flight),
        done=done,
        bytes_stored=bytes_stored,
        oldest_in_flight_at=min(in_flight, default=None),
    )


def _read_expiry(reads: Pipeline, key: Key) -> None:
    reads.hget(key, "expires_at")


def _read_record(reads: Pipeline, key: Key) -> None:
    reads.hgetall(key)


def _read_stats(reads: Pipeline, key: Key) -> None:
    reads.hmget(key, ["state", "created_at", "expires_at"])
    reads.hstrlen(key, "outcome")


def _scan(
    redis: Redis, space: lua.KeySpace, read: Callable[[Pipeline, Key], object]
) -> Iterator[tuple[list[Key], list[Any]]]:
    """SCAN the store's keys; yield each batch's keys and the replies to what `read` asked
    of each key, all in one pipeline a batch."""
    cursor = 0
    while True:
        cursor, keys = redis.scan(cursor, match=space.match, count=_SCAN_COUNT, _type="hash")
        if keys:
            reads = redis.pipeline(transaction=False)
            for key in keys:
                read(reads, key)
            yield keys, reads.execute()
        if cursor == 0:
            return
