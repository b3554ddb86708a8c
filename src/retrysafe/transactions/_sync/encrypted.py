# Generated from transactions/_async/encrypted.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Encryption at rest in transactional mode: the outcome sealed before it joins the writes.

`EncryptedBackend` wraps a transaction's backend, as `stores/_async/encrypted.py` wraps
a store: the outcome given to `complete` is sealed by the `Keyring` before the backend writes
it in the caller's transaction, and a record a claim finds is opened before the transaction
replays it, so a table shared with an encrypted store reads the same. A record that does not
open raises `StoreError`, and the transaction rolls back.
"""

from __future__ import annotations

from retrysafe._encryption import Keyring, with_outcome
from retrysafe._record import Claim, Identity, Record
from retrysafe.transactions._sync.transaction import Backend
from retrysafe.transactions._state import check_keyring, was_aborted

__all__ = ["EncryptedBackend", "encrypting"]


class EncryptedBackend:
    """`backend`, with the outcome it stores encrypted under `keyring`.

    Args:
        backend: the driver's backend, which runs the statements in the caller's transaction.
        keyring: the keys: the first seals, every one opens.
    """

    def __init__(self, backend: Backend, keyring: Keyring) -> None:
        self.backend = backend
        self.keyring = keyring

    @property
    def sealed(self) -> Backend:
        """The backend behind, whose records carry their outcomes as stored (as an encrypted
        store's `sealed`: `retrysafe._encryption.behind_encryption`)."""
        return self.backend

    def in_transaction(self) -> bool:
        """Return whether the connection has a transaction open already."""
        return self.backend.in_transaction()

    def aborted(self) -> bool:
        """Return whether the backend's open transaction was aborted."""
        return was_aborted(self.backend)

    def begin(self) -> None:
        """Start the backend's transaction (or savepoint)."""
        self.backend.begin()

    def end(self, *, commit: bool) -> None:
        """Commit or roll back the backend's transaction."""
        self.backend.end(commit=commit)

    def claim(
        self, identity: Identity, fingerprint: str, *, now: float, lease: float, retention: float
    ) -> Claim:
        """Claim in the transaction; an outcome it finds comes back decrypted."""
        claim = self.backend.claim(
            identity, fingerprint, now=now, lease=lease, retention=retention
        )
        return self.keyring.open_claim(claim)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, now: float, retention: float
    ) -> Record:
        """Store `outcome` encrypted in the transaction; return the record with it in clear."""
        sealed = self.keyring.seal(identity, outcome)
        done = self.backend.complete(identity, token, sealed, now=now, retention=retention)
        return with_outcome(done, outcome)

    def renew(self, identity: Identity, token: str, *, now: float, lease: float) -> Record:
        """Renew the held record's lease in the transaction."""
        record = self.backend.renew(identity, token, now=now, lease=lease)
        return self.keyring.open_record(record)

    def checkpoint(
        self, identity: Identity, token: str, recovery_point: str, *, now: float
    ) -> Record:
        """Record the last committed phase in the transaction."""
        record = self.backend.checkpoint(identity, token, recovery_point, now=now)
        return self.keyring.open_record(record)


def encrypting(backend: Backend, encryption: Keyring | None) -> Backend:
    """Return `backend`, behind `encryption` when keys are given; anything but keys or None is
    refused before any I/O, so what was meant to be sealed is never stored in clear."""
    keyring = check_keyring(encryption)
    return backend if keyring is None else EncryptedBackend(backend, keyring)
