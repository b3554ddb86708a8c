# Generated from stores/_async/cached.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""A cache of completed records in front of any store: replays without a round trip.

    store = open_async_store("redis://cache:6379/0?replay_cache=10000")

A completed record does not change until it is deleted or its retention ends, so this process
may answer a claim that finds one (a replay, or a mismatch) from memory. `ReplayCache`
wraps a store: what a `claim` or a `complete` learns of a done record is kept, by identity, in
a bounded LRU (`max_records`, `max_bytes` of outcomes), for at most `ttl` seconds; a claim that
finds it answers from it (`decide_claim`, as the stores decide). Everything else goes to the
store.

Freshness: expiry is checked on every read (B21); a delete or a purge through this wrapper
drops the entry at once. A delete made elsewhere (`retrysafe keys delete` on another machine)
is heard through `deletes`, the store's announcements (Redis and PostgreSQL: see
`stores/_deletes.py`), as soon as it is announced; while that subscription is down nothing is
answered from memory. A store without announcements (SQLite) sees another process's delete
within `ttl`. Until then a retry of that key replays the old outcome instead of running again:
never a second run, at worst a late one (the key's invariant holds). An in-flight record is
never cached, so a claim that must wait, take over or refuse always reaches the store.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal, Unpack

from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores._deletes import FORKS, DeleteListener, Subscription
from retrysafe.stores.base import Store, ListingOptions, StoreStats, decide_claim

__all__ = ["DEFAULT_REPLAY_BYTES", "DEFAULT_REPLAY_TTL", "ReplayCache"]

DEFAULT_REPLAY_TTL: Final = 5.0
"""How long a completed record is answered from memory, at most, in seconds."""
DEFAULT_REPLAY_BYTES: Final = 64 * 1024 * 1024
"""The most outcome bytes kept."""


class ReplayCache:
    """`store`, with the completed records it reports kept in memory for replays.

    Args:
        store: the store behind.
        max_records: the most records kept (the least recently used go first).
        max_bytes: the most outcome bytes kept.
        ttl: the longest a record is answered from memory, in seconds of the store's clock:
            the bound on how late this process sees a delete made by another that `deletes`
            does not announce.
        deletes: opens a subscription to the store's delete announcements; by default the
            store's own (`delete_announcements()`: Redis and PostgreSQL stores opened from a
            URL make them), None where it makes none.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_records: int,
        max_bytes: int = DEFAULT_REPLAY_BYTES,
        ttl: float = DEFAULT_REPLAY_TTL,
        deletes: Callable[[], Subscription] | Literal["store"] | None = "store",
    ) -> None:
        if max_records < 1 or max_bytes < 1 or not ttl > 0:
            raise ConfigurationError(
                "A replay cache keeps at least one record and one byte, for more than 0 s."
            )
        self.store = store
        self.clock = store.clock
        self._max_records, self._max_bytes, self._ttl = max_records, max_bytes, ttl
        self._kept: OrderedDict[Identity, tuple[Record, float]] = OrderedDict()
        self._bytes = 0
        self._ids: dict[str, Identity] = {}  # the kept records' ids (`Identity.digest()`)
        self._lock = threading.Lock()
        self._epoch = 0  # moves at every delete heard: a read older than it is not kept
        self._live_in = -1  # the `FORKS.count` whose listener is subscribed; -1: none is
        self.hits = 0
        """Claims answered from memory."""
        self.subscriptions = 0
        """How many times the cache has subscribed to the store's deletes; each time it was
        emptied, since deletes may have been missed before."""
        self._listener: DeleteListener | None = None
        if deletes == "store":
            announcements = getattr(store, "delete_announcements", None)
            deletes = announcements() if announcements is not None else None
        if deletes is not None and deletes != "store":
            # Last: the listener's thread calls back into the cache at once.
            self._listener = DeleteListener(deletes, self, name="retrysafe-replay-deletes")
            self._listener.ensure_running()

    @property
    def listening(self) -> bool:
        """Whether memory may answer now: the store announces no deletes, or this process is
        subscribed to them."""
        return self._listener is None or self._live_in == FORKS.count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)  # a backend's own extras (its table, its prefix)

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Answer from memory if the record is kept and done, else claim in the store."""
        now = self.clock.now()
        kept = self._read(identity, now)
        if kept is not None:
            self.hits += 1
            return decide_claim(identity, fingerprint, kept, now, lease=lease, retention=retention)
        epoch = self._epoch
        claim = self.store.claim(identity, fingerprint, lease=lease, retention=retention)
        if not claim.acquired:
            self._keep(claim.record, epoch)
        return claim

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Complete in the store, and keep the done record."""
        epoch = self._epoch
        done = self.store.complete(identity, token, outcome, retention=retention)
        self._keep(done, epoch)
        return done

    def release(self, identity: Identity, token: str) -> None:
        """Release in the store."""
        self.store.release(identity, token)

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Renew in the store."""
        return self.store.renew(identity, token, lease=lease)

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Checkpoint in the store."""
        return self.store.checkpoint(identity, token, recovery_point)

    def get(self, identity: Identity) -> Record | None:
        """Return the record: from memory if it is kept, else from the store."""
        kept = self._read(identity, self.clock.now())
        return kept if kept is not None else self.store.get(identity)

    def delete(self, identity: Identity) -> bool:
        """Forget the record here, then delete it in the store."""
        self._drop(identity)
        return self.store.delete(identity)

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Purge in the store (expired records are never answered from memory)."""
        return self.store.purge_expired(limit=limit)

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """List from the store."""
        return self.store.list_records(**filters)

    def stats(self) -> StoreStats:
        """Count in the store."""
        return self.store.stats()

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait in the store, keeping what it settles to."""
        epoch = self._epoch
        record = self.store.wait(identity, timeout=timeout)
        if record is not None:
            self._keep(record, epoch)
        return record

    def close(self) -> None:
        """Stop hearing deletes, and close the store."""
        if self._listener is not None:
            self._listener.close()
        self.store.close()

    def forget_id(self, record_id: str) -> None:
        """Drop the record whose id is `record_id`: it was deleted (the listener calls it)."""
        with self._lock:
            self._epoch += 1
            identity = self._ids.get(record_id)
            if identity is not None:
                self._forget(identity)

    def subscribed(self, live: bool) -> None:
        """Empty the cache: deletes may have been missed. Answer from memory again only once
        the listener is `live` (the listener calls it)."""
        with self._lock:
            self._epoch += 1
            self._kept.clear()
            self._ids.clear()
            self._bytes = 0
            self._live_in = FORKS.count if live else -1
            self.subscriptions += live

    def _answers(self) -> bool:
        """Whether memory may answer: no deletes to hear, or a listener subscribed for this
        process (a fork's child starts its own)."""
        if self._listener is None or self._live_in == FORKS.count:
            return True
        self._listener.ensure_running()
        return False

    def _read(self, identity: Identity, now: float) -> Record | None:
        if not self._answers():
            return None
        with self._lock:
            entry = self._kept.get(identity)
            if entry is None:
                return None
            record, fresh_until = entry
            if record.expires_at <= now or fresh_until <= now:
                self._forget(identity)
                return None
            self._kept.move_to_end(identity)
            return record

    def _keep(self, record: Record, epoch: int) -> None:
        """Keep `record`, read from the store at `epoch`: not if a delete was heard since (it
        may be this record's), nor while deletes cannot be heard."""
        if record.state is not State.DONE or record.size > self._max_bytes:
            return
        record_id = record.identity.digest() if self._listener is not None else ""
        with self._lock:
            if epoch != self._epoch or not self._answers():
                return
            self._forget(record.identity)
            self._kept[record.identity] = (record, self.clock.now() + self._ttl)
            if record_id:
                self._ids[record_id] = record.identity
            self._bytes += record.size
            while len(self._kept) > self._max_records or self._bytes > self._max_bytes:
                self._forget(next(iter(self._kept)))

    def _drop(self, identity: Identity) -> None:
        with self._lock:
            self._epoch += 1  # a read of it in flight must not put it back
            self._forget(identity)

    def _forget(self, identity: Identity) -> None:
        entry = self._kept.pop(identity, None)
        if entry is not None:
            self._bytes -= entry[0].size
            if self._listener is not None:
                self._ids.pop(identity.digest(), None)
