# Generated from stores/_async/memory.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The in-memory store: one process, no set-up; for tests and single-process apps."""

from __future__ import annotations

import dataclasses
import threading
from typing import Final, Unpack
from urllib.parse import urlsplit

from retrysafe._clock import Clock, SystemClock
from retrysafe._errors import ConfigurationError, FencedError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores._sync._common import poll_until_settled
from retrysafe.stores.base import (
    FENCED,
    Listing,
    ListingOptions,
    StoreStats,
    decide_claim,
    stats_of,
)

__all__ = ["MemoryStore"]

# How a record is kept: its identity's parts as the dict key, and its other fields in a plain
# tuple of strings, numbers and bytes. The garbage collector stops tracking such tuples after
# their first collection; kept as Record and Identity objects instead, every record would be
# traversed at every full collection (pauses of 50-150 ms once tens of thousands are stored).
# The primitives work on `Record`s; `_freeze` and `_thaw` convert at the dict's edge.
_Key = tuple[str, str, str]  # namespace, scope, key
_Row = tuple[str, str, str, float, float, float, bytes | None, str | None]
# the values of `RECORD_FIELDS` (stores/base.py), in that order
_EXPIRES_AT: Final = 5  # the one field read without thawing: purges and counts scan every record


def _key(identity: Identity) -> _Key:
    return (identity.namespace, identity.scope, identity.key)


def _freeze(record: Record) -> _Row:
    return (
        record.fingerprint,
        record.state.value,
        record.token,
        record.created_at,
        record.lease_expires_at,
        record.expires_at,
        record.outcome,
        record.recovery_point,
    )


def _thaw(key: _Key, row: _Row) -> Record:
    fingerprint, state, token, created_at, lease_expires_at, expires_at, outcome, point = row
    return Record(
        identity=Identity(*key),
        fingerprint=fingerprint,
        state=State(state),
        token=token,
        created_at=created_at,
        lease_expires_at=lease_expires_at,
        expires_at=expires_at,
        outcome=outcome,
        recovery_point=point,
    )


class MemoryStore:
    """A store in a dict behind a lock. Every primitive is atomic under the lock.

    Args:
        clock: the time source for leases and retention.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self._records: dict[_Key, _Row] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> MemoryStore:
        """Build the store from `memory://`."""
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.netloc or parts.path or parts.query:
            raise ConfigurationError(f"A memory store URL is just 'memory://', not {url!r}.")
        return cls(clock=clock)

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        with self._lock:
            now = self.clock.now()
            existing = self._live(identity, now)
            claim = decide_claim(
                identity, fingerprint, existing, now, lease=lease, retention=retention
            )
            if claim.acquired:
                self._records[_key(identity)] = _freeze(claim.record)
            return claim

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done."""
        with self._lock:
            now = self.clock.now()
            record = self._held(identity, token, now)
            done = dataclasses.replace(
                record,
                state=State.DONE,
                outcome=outcome,
                lease_expires_at=now,
                expires_at=now + retention,
            )
            self._records[_key(identity)] = _freeze(done)
            return done

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record."""
        with self._lock:
            self._held(identity, token, self.clock.now())
            del self._records[_key(identity)]

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
            self._records[_key(identity)] = _freeze(renewed)
            return renewed

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase."""
        with self._lock:
            record = self._held(identity, token, self.clock.now())
            updated = dataclasses.replace(record, recovery_point=recovery_point)
            self._records[_key(identity)] = _freeze(updated)
            return updated

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None."""
        with self._lock:
            return self._live(identity, self.clock.now())

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state."""
        with self._lock:
            return self._records.pop(_key(identity), None) is not None

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention."""
        with self._lock:
            now = self.clock.now()
            expired = [k for k, row in self._records.items() if row[_EXPIRES_AT] <= now][:limit]
            for key in expired:
                del self._records[key]
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
            del self._records[key]
            return None
        return _thaw(key, row)

    def _held(self, identity: Identity, token: str, now: float) -> Record:
        record = self._live(identity, now)
        if record is None or record.token != token or record.state is not State.IN_FLIGHT:
            raise FencedError(FENCED)
        return record
