# Generated from stores/_async/memory.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The in-memory store: one process, no set-up; for tests and single-process apps.

It can be capped (B36): `max_records` and `max_bytes` bound what a flood of new keys can make it
hold. A full store refuses new claims with `StoreUnavailableError`, which the middleware answers
with 503 and `Retry-After` (B20); it never evicts a live record, as a record evicted early lets a
retry run its effect again.

Its records live in one process: a store created before a fork (an app loaded in gunicorn's
master with `--preload`) is a separate store in each worker, and a key retried on another worker
runs again. The first fork that copies a live memory store logs a WARNING in the child
(`retrysafe.stores`), once per process; a request costs nothing more for it.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import threading
import weakref
from typing import Final, Unpack, cast
from urllib.parse import parse_qsl, urlsplit

from retrysafe._clock import Clock, SteadyClock
from retrysafe._errors import ConfigurationError, FencedError, StoreUnavailableError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores._sync._common import poll_until_settled
from retrysafe.stores.base import (
    FENCED,
    Listing,
    ListingOptions,
    RecordValues,
    StoreStats,
    decide_claim,
    query_options,
    record_values,
    stats_of,
)

__all__ = ["MemoryStore"]

_URL_FORM: Final = "just 'memory://', optionally with '?max_records=N&max_bytes=B'"
_OPTIONS: Final[dict[str, type]] = {"max_records": int, "max_bytes": int}
_SLACK: Final = 1024  # stale entries on the expiry heap allowed beyond one per record
_LIVE: Final[weakref.WeakSet[MemoryStore]] = weakref.WeakSet()  # the stores a fork copies
_PARENT = [os.getpid()]  # the process the live stores were made in; a warned child resets it


def _after_fork() -> None:
    if _LIVE and _PARENT[0] != os.getpid():
        logging.getLogger("retrysafe.stores").warning(
            "A memory:// store made in process %d is used in process %d, forked from it: each "
            "process has its own records, so a key retried on another worker runs again. Use "
            "a shared store (sqlite, postgresql, mysql, redis) with several workers.",
            _PARENT[0],
            os.getpid(),
        )
    _PARENT[0] = os.getpid()


os.register_at_fork(after_in_child=_after_fork)

# How a record is kept: its identity's parts as the dict key, and its other fields in a plain
# tuple of strings, numbers and bytes. The garbage collector stops tracking such tuples after
# their first collection; kept as Record and Identity objects instead, every record would be
# traversed at every full collection (pauses of 50-150 ms once tens of thousands are stored).
# The primitives work on `Record`s; `_freeze` and `_thaw` convert at the dict's edge.
_Key = tuple[str, str, str]  # namespace, scope, key
_Row = RecordValues  # the values of `RECORD_FIELDS` (stores/base.py), in that order
_STATE: Final = 1  # the fields read without thawing: a completion checks the holder,
_TOKEN: Final = 2  # purges and counts scan every record's expiry
_EXPIRES_AT: Final = 5
_IN_FLIGHT: Final = State.IN_FLIGHT.value
_DONE: Final = State.DONE.value


def _key(identity: Identity) -> _Key:
    return (identity.namespace, identity.scope, identity.key)


def _freeze(record: Record) -> _Row:
    return record_values(record)


def _thaw(key: _Key, row: _Row) -> Record:
    fingerprint, state, token, created_at, lease_expires_at, expires_at, outcome, point = row
    return Record(  # positional, in `RECORD_FIELDS` order, as the row is
        Identity(*key), fingerprint, State(state), token, created_at, lease_expires_at, expires_at,
        outcome, point,
    )  # fmt: skip


def _size(key: _Key, row: _Row) -> int:
    """Return what a record counts against `max_bytes`: its variable-length data.

    One per character of the identity's parts, the fingerprint and the recovery point, plus the
    outcome's bytes; the fixed-size fields (state, token, times) are bounded by `max_records`.
    """
    namespace, scope, name = key
    fingerprint, outcome, point = row[0], row[6], row[7]
    size = len(namespace) + len(scope) + len(name) + len(fingerprint)
    return size + (0 if outcome is None else len(outcome)) + (0 if point is None else len(point))


def _limit(name: str, value: int | None) -> int | None:
    """Return `value` if it is None or a positive integer; raise ConfigurationError if not."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigurationError(
            f"The memory store option {name} must be a positive integer, not {value!r}."
        )
    return value


class MemoryStore:
    """A store in a dict behind a lock. Every primitive is atomic under the lock, and none
    waits: the async primitives return without suspending (`suspends` is False).

    A claim that would add a record (the key has no live record) to a full store first drops
    the records past their retention, then, if it is still full, raises `StoreUnavailableError`.
    Claims on a key that has a live record (a replay, a mismatch, one in flight, the takeover of
    an expired lease) work whatever the store holds, and no live record is ever evicted.
    `complete` and `checkpoint` always land, even past `max_bytes`: the effect has run, and
    refusing would lose its outcome. So the byte cap can be exceeded by the outcomes of claims
    already in flight, by at most what they store.

    Args:
        clock: the time source for leases and retention (default: the wall clock read once,
            then advanced by the monotonic clock, so a step of the wall clock ends no lease
            and no retention early: `SteadyClock`).
        max_records: the most records held; None for no limit.
        max_bytes: the most bytes of record data held: one per character of the identity's
            parts, the fingerprint and the recovery point, plus the outcome's bytes; None for
            no limit.
    """

    suspends: bool = False
    """Whether a primitive may wait (for I/O, a thread): never, so a caller's cancellation
    cannot interrupt one, and the flow needs no shield around them. A subclass whose
    primitives something must set it to True."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        max_records: int | None = None,
        max_bytes: int | None = None,
    ) -> None:
        self.clock: Clock = clock or SteadyClock()
        self._max_records = _limit("max_records", max_records)
        self._max_bytes = _limit("max_bytes", max_bytes)
        self._records: dict[_Key, _Row] = {}
        # With a cap, every write keeps two things up to date so that claims never scan: the
        # `_size` of every record held, which tells a full store apart in O(1), and a heap of
        # (expires_at, key) pushed at each write, which finds the expired records to drop in
        # O(log n) each. An entry left by a record since rewritten or deleted is skipped when
        # popped; the heap is rebuilt from the records when such entries outnumber them.
        self._capped = max_records is not None or max_bytes is not None
        self._bytes = 0
        self._expiries: list[tuple[float, _Key]] = []
        self._lock = threading.Lock()
        _LIVE.add(self)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MemoryStore:
        """Build the store from `memory://`, with the options `max_records` and `max_bytes`."""
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.netloc or parts.path or parts.fragment:
            raise ConfigurationError(f"A memory store URL is {_URL_FORM}, not {url!r}.")
        options = query_options(parts.query, _OPTIONS)
        names = [name for name, _ in parse_qsl(parts.query, keep_blank_values=True)]
        for name in names:
            if names.count(name) > 1:
                raise ConfigurationError(f"Store URL option {name} is given twice in {url!r}.")
        max_records = cast("int | None", options.get("max_records"))
        max_bytes = cast("int | None", options.get("max_bytes"))
        return cls(clock=clock, max_records=max_records, max_bytes=max_bytes)

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        with self._lock:
            now = self.clock.now()
            existing = self._live(identity, now)
            if existing is None and self._capped:  # the claim adds a record: it must fit
                # its `_size`: the identity's parts and the fingerprint, no outcome yet
                self._make_room(len(fingerprint) + sum(map(len, _key(identity))), now)
            claim = decide_claim(
                identity, fingerprint, existing, now, lease=lease, retention=retention
            )
            if claim.acquired:
                self._put(claim.record)
            return claim

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done (never refused by the caps)."""
        key = _key(identity)
        with self._lock:
            now = self.clock.now()
            row = self._records.get(key)
            if row is not None and row[_EXPIRES_AT] <= now:  # past its retention: gone
                self._remove(key)
                row = None
            if row is None or row[_TOKEN] != token or row[_STATE] != _IN_FLIGHT:
                raise FencedError(FENCED)
            fingerprint, _, _, created_at, _, _, _, point = row
            expires_at = now + retention
            self._write(
                key, (fingerprint, _DONE, token, created_at, now, expires_at, outcome, point)
            )
        return Record(
            identity, fingerprint, State.DONE, token, created_at, now, expires_at, outcome, point
        )

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record."""
        with self._lock:
            self._held(identity, token, self.clock.now())
            self._remove(_key(identity))

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease."""
        with self._lock:
            now = self.clock.now()
            record = self._held(identity, token, now)
            lease_expires_at = now + lease
            renewed = dataclasses.replace(
                record,
                lease_expires_at=lease_expires_at,
                expires_at=record.expires_at + max(0.0, lease_expires_at - record.lease_expires_at),
            )
            self._put(renewed)
            return renewed

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase (never refused by the caps)."""
        with self._lock:
            record = self._held(identity, token, self.clock.now())
            updated = dataclasses.replace(record, recovery_point=recovery_point)
            self._put(updated)
            return updated

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        with self._lock:
            return self._live(identity, self.clock.now())

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state."""
        with self._lock:
            return self._remove(_key(identity))

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        with self._lock:
            now = self.clock.now()
            expired = [k for k, row in self._records.items() if row[_EXPIRES_AT] <= now][:limit]
            for key in expired:
                self._remove(key)
            return len(expired)

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first."""
        listing = Listing(**filters)
        return listing.newest([r for r in self._all_live() if listing.matches(r)])

    def stats(self) -> StoreStats:
        """Return counts of live records."""
        return stats_of(self._all_live())

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Poll until the record settles or `timeout` passes."""
        return poll_until_settled(self, identity, timeout)

    def close(self) -> None:
        """Nothing to release."""

    def _all_live(self) -> list[Record]:
        with self._lock:
            now = self.clock.now()
            return [_thaw(k, row) for k, row in self._records.items() if row[_EXPIRES_AT] > now]

    def _live(self, identity: Identity, now: float) -> Record | None:
        key = _key(identity)
        row = self._records.get(key)
        if row is None:
            return None
        if row[_EXPIRES_AT] <= now:
            self._remove(key)
            return None
        return _thaw(key, row)

    def _held(self, identity: Identity, token: str, now: float) -> Record:
        record = self._live(identity, now)
        if record is None or record.token != token or record.state is not State.IN_FLIGHT:
            raise FencedError(FENCED)
        return record

    def _put(self, record: Record) -> None:
        """Write `record` (see `_write`)."""
        self._write(_key(record.identity), _freeze(record))

    def _write(self, key: _Key, row: _Row) -> None:
        """Write `row`; with a cap, keep the byte total and the expiry heap up to date."""
        old = self._records.get(key)
        self._records[key] = row
        if self._capped:
            self._bytes += _size(key, row) - (0 if old is None else _size(key, old))
            heapq.heappush(self._expiries, (row[_EXPIRES_AT], key))
            if len(self._expiries) > 2 * len(self._records) + _SLACK:
                self._expiries = [(r[_EXPIRES_AT], k) for k, r in self._records.items()]
                heapq.heapify(self._expiries)

    def _remove(self, key: _Key) -> bool:
        """Delete the record at `key`, if any; return whether there was one."""
        row = self._records.pop(key, None)
        if row is None:
            return False
        if self._capped:
            self._bytes -= _size(key, row)
        return True

    def _fits(self, size: int) -> bool:
        """Return whether a new record of `size` bytes is within both caps."""
        return (self._max_records is None or len(self._records) < self._max_records) and (
            self._max_bytes is None or self._bytes + size <= self._max_bytes
        )

    def _make_room(self, size: int, now: float) -> None:
        """Make room for a new record of `size` bytes, or raise `StoreUnavailableError`.

        Only records past their retention are dropped: every one of them, found on the expiry
        heap, so a full store under a flood of new keys refuses each without a scan.
        """
        if self._fits(size):
            return
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, key = heapq.heappop(expiries)
            row = self._records.get(key)
            if row is not None and row[_EXPIRES_AT] <= now:
                self._remove(key)
        if self._fits(size):
            return
        raise StoreUnavailableError(
            f"The memory store is full: {len(self._records)} records / {self._bytes} bytes"
            f" (max_records={self._max_records}, max_bytes={self._max_bytes}); a new record of"
            f" {size} bytes does not fit, no record is past its retention, and live records are"
            " never evicted. Retry later, or raise the limits."
        )
