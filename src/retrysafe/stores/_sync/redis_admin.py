# Generated from stores/_async/redis_admin.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The Redis store's admin operations: they SCAN the store's keys, O(records).

Meant for the `retrysafe keys` CLI and periodic jobs, not for request paths. Each takes a
client (a Redis server, or one master of a cluster: `Scannable`) and the store's key space
(`space`); the store maps Redis errors around the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Callable
from typing import Any, Protocol

from redis.client import Pipeline
from redis.commands.core import Script

from retrysafe._record import Record
from retrysafe.stores import _redis_layout as layout
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores.base import Listing, StoreStats

__all__ = ["list_records", "purge_expired", "stats"]

_SCAN_COUNT = 1000

Key = bytes | str  # a key as redis-py types the reply to SCAN


class Scannable(Protocol):
    """What the admin operations use of a client: SCAN one server, and pipelines."""

    def scan(self, cursor: int = ..., **options: Any) -> Any:
        """Return (awaitable on the async face) the server's next cursor and a batch of keys."""
        ...

    def pipeline(self, transaction: bool = ...) -> Any:
        """Return a pipeline that sends each command where its key lives."""
        ...


def purge_expired(
    redis: Scannable, space: lua.KeySpace, purge: Script, *, now: float, limit: int
) -> int:
    """Delete at most `limit` records past their retention, SCANning in batches."""
    purged = 0
    if limit <= 0:
        return purged
    for keys, expiries in _scan(redis, space, _read_expiry):
        expired = [
            key
            for key, expires_at in zip(keys, expiries, strict=True)
            if expires_at is not None and expires_at <= now
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
    redis: Scannable, space: lua.KeySpace, listing: Listing, *, now: float
) -> list[Record]:
    """Return the live records `listing` asks for, newest first."""
    matching: list[Record] = []
    for _, values in _scan(redis, space, _read_record):
        for found in values:
            if not found:
                continue  # expired or deleted since the SCAN
            if isinstance(found, bytes):
                record = layout.record_from_string(found)
            else:
                record = layout.record_from_fields(found)
            if record.expires_at > now and listing.matches(record):
                matching.append(record)
    return listing.newest(matching)


def stats(redis: Scannable, space: lua.KeySpace, *, now: float) -> StoreStats:
    """Return counts of live records (outcomes are sized, not read)."""
    in_flight: list[float] = []
    done = 0
    bytes_stored = 0
    for _, replies in _scan(redis, space, _read_stats):
        for state, created_at, expires_at, size in replies:
            if expires_at is None or expires_at <= now:
                continue
            bytes_stored += size
            if state == b"in_flight":
                in_flight.append(created_at)
            else:
                done += 1
    return StoreStats(
        in_flight=len(in_flight),
        done=done,
        bytes_stored=bytes_stored,
        oldest_in_flight_at=min(in_flight, default=None),
    )


# What each admin operation reads of a key, by layout: the commands to queue on the pipeline,
# and the function that turns their replies into the operation's value for that key.


def _read_expiry(reads: Pipeline, key: Key, string: bool) -> Callable[[list[Any]], Any]:
    if string:
        reads.getrange(key, 0, layout.SIZE - 1)
        return lambda replies: _head_of(replies[0], 0)[2]
    reads.hget(key, "expires_at")
    return lambda replies: None if replies[0] is None else float(replies[0])


def _read_record(reads: Pipeline, key: Key, string: bool) -> Callable[[list[Any]], Any]:
    if string:
        reads.get(key)
    else:
        reads.hgetall(key)
    return lambda replies: replies[0]


def _read_stats(reads: Pipeline, key: Key, string: bool) -> Callable[[list[Any]], Any]:
    if string:
        reads.getrange(key, 0, layout.SIZE - 1)
        reads.strlen(key)
        return lambda replies: _head_of(replies[0], replies[1])
    reads.hmget(key, ["state", "created_at", "expires_at"])
    reads.hstrlen(key, "outcome")

    def stats_of(replies: list[Any]) -> tuple[Any, ...]:
        (state, created_at, expires_at), size = replies
        if expires_at is None:
            return (None, None, None, 0)
        return (state, float(created_at), float(expires_at), size)

    return stats_of


def _head_of(head: bytes, length: int) -> tuple[Any, ...]:
    """Return state, created_at, expires_at and outcome size from a layout-2 head."""
    read = layout.outcome_size(head, length)
    if read is None:
        return (None, None, None, 0)  # gone since the SCAN, or not a record
    state, created_at, expires_at, size = read
    return (b"in_flight" if state == b"i" else b"done", created_at, expires_at, size)


Read = Callable[[Pipeline, Key, bool], Callable[[list[Any]], Any]]


def _scan(
    redis: Scannable, space: lua.KeySpace, read: Read
) -> Iterator[tuple[list[Key], list[Any]]]:
    """SCAN the store's keys, strings (layout 2) then hashes (layout 1); yield each batch's keys
    and what `read` made of each key's replies, all read in one pipeline a batch."""
    for kind in ("string", "hash"):
        cursor = 0
        while True:
            cursor, keys = redis.scan(
                cursor, match=space.match, count=_SCAN_COUNT, _type=kind
            )
            if keys:
                reads = redis.pipeline(transaction=False)
                makers = [(read(reads, key, kind == "string"), len(reads)) for key in keys]
                replies = reads.execute()
                start = 0
                values = []
                for make, end in makers:
                    values.append(make(replies[start:end]))
                    start = end
                yield keys, values
            if cursor == 0:
                break
