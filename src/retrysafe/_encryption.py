"""Encryption at rest: stored outcomes sealed with AES-256-GCM under a keyring.

    store = open_store("sqlite:///idem.db?encryption_key_env=RETRYSAFE_KEYS")

A `Keyring` holds one or more 32-byte keys: the first seals every new outcome, all of them
open (rotation: put the new key first, keep the old ones until the records they sealed have
ended their retention). A sealed outcome is

    b"rse\\x01" | key id (8 bytes) | nonce (12 bytes) | AES-GCM ciphertext and tag

The key id (the start of a SHA-256 of the key) says which key opens it. The associated data
is the header and the record's identity digest (namespace, scope and key, `Identity.digest`),
so a ciphertext copied onto another record does not open. What does not open, an unknown
key id, an altered byte, a moved ciphertext, an outcome stored in clear, raises `StoreError`:
a store that answers wrongly, never an outcome replayed as garbage (fail closed). Only a listing
(and the admin tools' reads) returns such a record, as an `UnreadableRecord` without its
outcome, so that one record cannot hide, or keep anyone from deleting, all the others.

What stays in clear: the identity (namespace, scope, key: the store looks records up by
them), the request fingerprint (a digest), the state, the fencing token, the times and the
recovery point (a phase name the code chooses, not request data).

`cryptography` is imported when the first keyring is made (the `encryption` extra).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final, TypeVar, cast

from retrysafe._errors import ConfigurationError, RecordUnreadableError
from retrysafe._extras import missing_extra
from retrysafe._record import Claim, Identity, Record

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "MAGIC",
    "SEALING_OVERHEAD",
    "Keyring",
    "UnreadableRecord",
    "behind_encryption",
    "sealed_key_id",
    "with_outcome",
]

StoreT = TypeVar("StoreT")

MAGIC: Final = b"rse\x01"
"""The first bytes of every sealed outcome: retrysafe encryption, format 1."""
_KEY_ID_BYTES: Final = 8
_NONCE_BYTES: Final = 12
_HEADER_BYTES: Final = len(MAGIC) + _KEY_ID_BYTES
_TAG_BYTES: Final = 16
_KEY_BYTES: Final = 32
SEALING_OVERHEAD: Final = _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES
"""How many bytes longer a sealed outcome is than the outcome (40)."""


class Keyring:
    """The keys that seal and open stored outcomes: the first seals, every one opens.

    Args:
        keys: AES-256 keys, each 32 bytes or their URL-safe base64 (as `generate_key` makes,
            like a Fernet key); the first seals new outcomes.
        source: where the keys came from, named in error messages (never the keys).
    """

    __slots__ = ("_ciphers", "_invalid_tag", "_sealing", "source")

    def __init__(self, keys: Sequence[bytes | str], *, source: str = "the keyring") -> None:
        if isinstance(keys, bytes | str) or not keys:
            raise ConfigurationError(f"Give {source} a list of one or more keys.")
        try:
            from cryptography.exceptions import InvalidTag  # noqa: PLC0415
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415
        except ImportError as error:
            raise missing_extra("Encryption at rest", "encryption", error) from error
        self.source = source
        self._invalid_tag = InvalidTag
        raws = [
            _key_bytes(key, f"Key {position} of {len(keys)} in {source}")
            for position, key in enumerate(keys, 1)
        ]
        self._ciphers: dict[bytes, AESGCM] = {key_id(raw): AESGCM(raw) for raw in raws}
        self._sealing = key_id(raws[0])

    @classmethod
    def from_env(cls, name: str) -> Keyring:
        """Return the keyring in the environment variable `name`: keys separated by commas.

        Raises:
            ConfigurationError: the variable is unset or empty, or a key is malformed.
        """
        value = os.environ.get(name, "")
        keys = [part.strip() for part in value.split(",") if part.strip()]
        if not keys:
            raise ConfigurationError(
                f"The environment variable {name} holds no encryption key: set it to one or "
                "more URL-safe base64 32-byte keys, separated by commas."
            )
        return cls(keys, source=f"the environment variable {name}")

    @staticmethod
    def generate_key() -> str:
        """Return a new random key, as URL-safe base64 of 32 bytes."""
        return base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)).decode("ascii")

    @property
    def key_ids(self) -> list[str]:
        """The ids of the keys, in hex, the sealing key's first."""
        return [self._sealing.hex(), *(k.hex() for k in self._ciphers if k != self._sealing)]

    def seal(self, identity: Identity, outcome: bytes) -> bytes:
        """Return `outcome` encrypted with the first key, bound to `identity`."""
        header = MAGIC + self._sealing
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._sealing].encrypt(nonce, outcome, _aad(header, identity))
        return header + nonce + sealed

    def open(self, identity: Identity, sealed: bytes) -> bytes:
        """Return the outcome that `seal` encrypted for `identity`.

        Raises:
            StoreError: it is not sealed, its key is not in the keyring, or it does not
                authenticate (altered, or sealed for another record).
        """
        where = f"The stored outcome of {identity.namespace!r} key {identity.key!r}"
        key = sealed_key_id(sealed)
        if key is None or len(sealed) < SEALING_OVERHEAD:
            raise RecordUnreadableError(
                f"{where} is not encrypted: it was stored before encryption was on, "
                "or by someone else; delete it."
            )
        cipher = self._ciphers.get(key)
        if cipher is None:
            raise RecordUnreadableError(
                f"{where} is encrypted with key {key.hex()}, which {self.source} does not hold."
            )
        header, nonce = sealed[:_HEADER_BYTES], sealed[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
        try:
            return cipher.decrypt(
                nonce, sealed[_HEADER_BYTES + _NONCE_BYTES :], _aad(header, identity)
            )
        except self._invalid_tag:
            raise RecordUnreadableError(
                f"{where} fails authentication: it was altered, or sealed for another record."
            ) from None

    def open_record(self, record: Record) -> Record:
        """Return `record` with its outcome decrypted (a record without one, as it is)."""
        if record.outcome is None:
            return record
        return with_outcome(record, self.open(record.identity, record.outcome))

    def open_listed(self, record: Record) -> Record:
        """Return `record` with its outcome decrypted, or as an `UnreadableRecord` if it does
        not open: what a listing and the admin tools show, never what a replay uses."""
        try:
            return self.open_record(record)
        except RecordUnreadableError as error:
            values = {field.name: getattr(record, field.name) for field in fields(Record)}
            values["outcome"] = None  # never the bytes as stored: they are `stored`
            return UnreadableRecord(**values, reason=str(error), stored=record.outcome or b"")

    def open_claim(self, claim: Claim) -> Claim:
        """Return `claim` with its record's outcome decrypted."""
        if claim.record.outcome is None:
            return claim
        return Claim(self.open_record(claim.record), claim.acquired, claim.taken_over)

    def __repr__(self) -> str:
        return f"Keyring(key_ids={self.key_ids})"  # the ids only: never a key


@dataclass(frozen=True, slots=True)
class UnreadableRecord(Record):
    """A record whose outcome does not open with the keyring (sealed with a key it does not
    hold, altered, or stored in clear), as listings return it: its `outcome` is None (never
    the bytes as stored, which no one may take for an outcome); `reason` says why, `stored` is
    what the store holds (its size is the record's). It can still be deleted or released."""

    reason: str = ""
    stored: bytes = b""

    @property
    def size(self) -> int:
        """Return the size of the outcome as stored."""
        return len(self.stored)


def behind_encryption(store: StoreT) -> tuple[StoreT, Keyring | None]:
    """Return the store that keeps `store`'s records as stored, and the keys that open them:
    the store behind an encrypted store (also through a replay cache in front of it), or
    `store` itself and None when it encrypts nothing."""
    keyring, sealed = getattr(store, "keyring", None), getattr(store, "sealed", None)
    if isinstance(keyring, Keyring) and sealed is not None:
        return cast(StoreT, sealed), keyring
    return store, None


def key_id(key: bytes) -> bytes:
    """Return the id of a raw key: the start of its SHA-256 under a label of this use."""
    return hashlib.sha256(b"retrysafe encryption key id\x00" + key).digest()[:_KEY_ID_BYTES]


def sealed_key_id(outcome: bytes) -> bytes | None:
    """Return the id of the key that sealed `outcome`, or None if it is not sealed.

    Without a keyring: what `retrysafe keys show` can say of an outcome it cannot open.
    """
    if not outcome.startswith(MAGIC) or len(outcome) < _HEADER_BYTES:
        return None
    return outcome[len(MAGIC) : _HEADER_BYTES]


def with_outcome(record: Record, outcome: bytes) -> Record:
    """Return `record` with `outcome` (what `dataclasses.replace` does, in a fifth of the time:
    every replay goes through here)."""
    return Record(
        record.identity,
        record.fingerprint,
        record.state,
        record.token,
        record.created_at,
        record.lease_expires_at,
        record.expires_at,
        bytes(outcome),
        record.recovery_point,
    )


def _aad(header: bytes, identity: Identity) -> bytes:
    return header + identity.digest().encode("ascii")


def _key_bytes(key: bytes | str, what: str) -> bytes:
    """Return a key's 32 raw bytes, from themselves or their URL-safe base64."""
    if isinstance(key, bytes) and len(key) == _KEY_BYTES:
        return key
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _KEY_BYTES:
        raise ConfigurationError(
            f"{what} is not a key: give 32 bytes, or their URL-safe base64 (44 characters), "
            "as retrysafe.stores.encrypted.Keyring.generate_key() makes."
        )
    return raw
