# Generated from stores/_async/encrypted.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Encryption at rest in front of any store: outcomes sealed on the way in, opened on the way out.

    store = open_async_store("redis://cache:6379/0?encryption_key_env=RETRYSAFE_KEYS")

`EncryptedStore` wraps a store: `complete` hands it the outcome sealed by a `Keyring`
(`retrysafe._encryption`: AES-256-GCM, bound to the record's identity), and every record it
returns (a claim that finds an outcome, `get`, `wait`, `list_records`) comes back opened. The
store behind never sees an outcome in clear; a record that does not open raises
`RecordUnreadableError` (a `StoreError`) where it would be used (a claim, `get`, `wait`), and
comes back marked (`UnreadableRecord`) from `list_records` and `inspect`, where the admin tools
read it: one such record never hides the others, and it can still be deleted or released.
Everything else passes through untouched: the store decides claims on the identity and the
fingerprint, which stay in clear.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Unpack

from retrysafe._encryption import SEALING_OVERHEAD, Keyring, with_outcome
from retrysafe._record import Claim, Identity, Record
from retrysafe.stores.base import Store, ListingOptions, StoreStats

__all__ = ["EncryptedStore"]


class EncryptedStore:
    """`store`, with every outcome encrypted at rest under `keyring`.

    Args:
        store: the store behind, which keeps the sealed outcomes.
        keyring: the keys: the first seals, every one opens.
    """

    def __init__(self, store: Store, keyring: Keyring) -> None:
        self.store = store
        self.keyring = keyring
        self.clock = store.clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)  # a backend's own extras (its table, its deletes)

    @property
    def sealed(self) -> Store:
        """The store behind, whose records carry their outcomes as stored: sealed, or in clear
        if stored before encryption was on (`retrysafe._encryption.behind_encryption`)."""
        return self.store

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim in the store; an outcome it finds comes back decrypted."""
        claim = self.store.claim(identity, fingerprint, lease=lease, retention=retention)
        return self.keyring.open_claim(claim)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` encrypted; return the done record with it in clear."""
        sealed = self.keyring.seal(identity, outcome)
        done = self.store.complete(identity, token, sealed, retention=retention)
        return with_outcome(done, outcome)

    def release(self, identity: Identity, token: str) -> None:
        """Release in the store."""
        self.store.release(identity, token)

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Renew in the store."""
        return self.keyring.open_record(self.store.renew(identity, token, lease=lease))

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Checkpoint in the store."""
        record = self.store.checkpoint(identity, token, recovery_point)
        return self.keyring.open_record(record)

    def get(self, identity: Identity) -> Record | None:
        """Return the record from the store, its outcome decrypted."""
        record = self.store.get(identity)
        return None if record is None else self.keyring.open_record(record)

    def inspect(self, identity: Identity) -> Record | None:
        """Return the record from the store as `list_records` does: its outcome decrypted, or
        an `UnreadableRecord` if it does not open (for the admin tools, never a replay)."""
        record = self.store.get(identity)
        return None if record is None else self.keyring.open_listed(record)

    def delete(self, identity: Identity) -> bool:
        """Delete in the store (a record that does not open can be deleted)."""
        return self.store.delete(identity)

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Purge in the store."""
        return self.store.purge_expired(limit=limit)

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """List from the store, each outcome decrypted; a record whose outcome does not open
        comes back as an `UnreadableRecord`, without it."""
        return [self.keyring.open_listed(r) for r in self.store.list_records(**filters)]

    def stats(self) -> StoreStats:
        """Count in the store; the bytes are the outcomes' in clear, as the records report
        them (each takes `SEALING_OVERHEAD` bytes more at rest)."""
        stats = self.store.stats()
        return dataclasses.replace(
            stats, bytes_stored=max(0, stats.bytes_stored - SEALING_OVERHEAD * stats.done)
        )

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait in the store; the record it settles to comes back decrypted."""
        record = self.store.wait(identity, timeout=timeout)
        return None if record is None else self.keyring.open_record(record)

    def close(self) -> None:
        """Close the store."""
        self.store.close()
