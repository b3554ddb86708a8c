"""The scope secret kept in the store when no setting names one (B8).

Generated on first use and stored with one atomic insert-if-absent: a claim of a reserved
identity, completed with 32 random bytes and kept for a century. Every process that shares the
store then hashes scopes with the same secret. If the secret is missing while records whose
scopes were hashed with one exist (an evicted key, a purge or a `keys delete` took it), that is
a store error: a new secret would silently change every scope, so a retry would run its effect
again. Restore it, or set one. Records of the other faces (the decorator's, a consumer's, a
`scope_function`'s) name their scopes as given, so a store they used first still gets a secret;
a store too large to check (`_SCAN` records or more) is refused as before.

On an encrypted store (`retrysafe.stores.encrypted`) the secret is read, claimed and the
records checked in the store behind it, with the outcomes as stored: the secret is opened with
the keys, or taken as it is when it was stored in clear (before encryption was turned on), and
no other record's outcome is opened, so a record that does not open fails no one's requests
but its own key's. A new secret is stored sealed. One kept in clear stays so: sealing it again
would first delete it, and in that moment another process could make a new one. Transactional
mode's encrypting backend reads and stores it by the same rule (`open_secret`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from retrysafe._encryption import Keyring, behind_encryption, sealed_key_id
from retrysafe._engine import Decision
from retrysafe._errors import RecordUnreadableError, StoreError
from retrysafe._flow.admission import Admission
from retrysafe._flow.drivers import AsyncFlow, SyncFlow
from retrysafe._flow.observing import observation_of, unreported
from retrysafe._record import Identity, Record

__all__ = [
    "SECRET_FINGERPRINT",
    "SECRET_IDENTITY",
    "SECRET_RETENTION",
    "aload_secret",
    "load_secret",
    "open_secret",
]

SECRET_IDENTITY: Final = Identity("retrysafe.internal", "-", "scope-secret")
"""Where the generated scope secret lives in the store; `keys delete` must not remove it."""
SECRET_FINGERPRINT: Final = "scope-secret"  # noqa: S105 - a fingerprint, not a password
SECRET_RETENTION: Final = 100 * 365 * 24 * 3600.0
"""A century: the secret outlives every record hashed with it."""


_SECRET_BYTES: Final = 32
_FIRST: Final = 100
"""The records read first: where a secret was lost, the newest records show it at once."""
_SCAN: Final = 10_000
"""The most records read to tell that none was scoped with a secret."""
_HASHED: Final = re.compile(r"[pc]:[0-9a-f]{64}")
"""A scope the HTTP faces hashed with the secret (`Scoper`): a principal's or a credential's."""


@dataclass(frozen=True, slots=True)
class _Terms:
    lease: float = 30.0
    retention: float = SECRET_RETENTION
    wait: float = 10.0


_TERMS: Final = _Terms()


def _known(admitted: Admission, keyring: Keyring | None) -> bytes | None:
    """Return the stored secret (its record as stored, opened with `keyring` if sealed), None
    when this caller must create it; raise otherwise."""
    if admitted.decision is Decision.EXECUTE:
        return None
    record = admitted.record
    if admitted.decision is Decision.REPLAY and record is not None and record.outcome:
        return open_secret(record.outcome, keyring)
    raise StoreError("The scope secret in the store cannot be read; set scope_secret.")


def open_secret(stored: bytes, keyring: Keyring | None) -> bytes:
    """Return the scope secret from its record's outcome as `stored`: opened with `keyring`
    if sealed, taken as it is if in clear (kept before encryption was turned on)."""
    key_id = sealed_key_id(stored)
    if len(stored) == _SECRET_BYTES:  # in clear: a sealed one is 40 bytes longer
        return stored
    if key_id is not None and keyring is not None:
        return keyring.open(SECRET_IDENTITY, stored)
    if key_id is not None:
        # Read without the keys: hashing scopes with the ciphertext would silently give
        # every caller another scope, and their retries would run again.
        raise RecordUnreadableError(
            f"The scope secret in the store is encrypted (key {key_id.hex()}): open the store"
            " with its keys (encryption_key_env= or encryption=) or set scope_secret."
        )
    return stored


def _check_fresh(records: Sequence[Record]) -> bytes:
    """Return a new secret if no record of `records` (at most `_SCAN`, newest first) was scoped
    with one; raise if one was, or if there may be more records than were read."""
    hashed = _hashed(records)
    if hashed or len(records) >= _SCAN:
        raise StoreError(
            "The scope secret is missing from the store, but records "
            + ("scoped with it exist" if hashed else f"exist ({_SCAN:,} or more, not all read)")
            + ": a new secret would change every scope. Restore the secret record or set "
            "scope_secret (RETRYSAFE_SCOPE_SECRET) to the one in use."
        )
    return secrets.token_bytes(_SECRET_BYTES)


def _hashed(records: Sequence[Record]) -> bool:
    """Whether one of `records` was scoped with a secret."""
    return any(_HASHED.fullmatch(record.identity.scope) for record in records)


def load_secret(flow: SyncFlow) -> bytes:
    """Return the store's scope secret, creating it if the store is empty. Loaded while a
    request is tracked, it reports to no operation (`unreported`); `flow`'s observed store
    calls are still told."""
    with unreported():
        return _load(flow)


def _load(flow: SyncFlow) -> bytes:
    store, keyring = behind_encryption(flow.store)
    stored = flow if keyring is None else SyncFlow(store, observation=observation_of(flow.store))
    admitted = stored.admit(SECRET_IDENTITY, SECRET_FINGERPRINT, _TERMS)
    known = _known(admitted, keyring)
    if known is not None:
        return known
    try:
        records = store.list_records(limit=_FIRST)
        if len(records) >= _FIRST and not _hashed(records):
            records = store.list_records(limit=_SCAN)
        secret = _check_fresh(records)
    except StoreError:
        stored.release(SECRET_IDENTITY, admitted.token)  # refuse at once, every time
        raise
    flow.store.complete(SECRET_IDENTITY, admitted.token, secret, retention=_TERMS.retention)
    return secret


async def aload_secret(flow: AsyncFlow) -> bytes:
    """Return the store's scope secret, creating it if the store is empty (see `load_secret`)."""
    with unreported():
        return await _aload(flow)


async def _aload(flow: AsyncFlow) -> bytes:
    store, keyring = behind_encryption(flow.store)
    stored = flow if keyring is None else AsyncFlow(store, observation=observation_of(flow.store))
    admitted = await stored.admit(SECRET_IDENTITY, SECRET_FINGERPRINT, _TERMS)
    known = _known(admitted, keyring)
    if known is not None:
        return known
    try:
        records = await store.list_records(limit=_FIRST)
        if len(records) >= _FIRST and not _hashed(records):
            records = await store.list_records(limit=_SCAN)
        secret = _check_fresh(records)
    except StoreError:
        await stored.release(SECRET_IDENTITY, admitted.token)  # refuse at once, every time
        raise
    await flow.store.complete(SECRET_IDENTITY, admitted.token, secret, retention=_TERMS.retention)
    return secret
