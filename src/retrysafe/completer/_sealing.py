"""Encryption at rest for the resumable table: the stored request and the last error sealed.

With keys (the `Keyring` of the store that shares the records table), the request a client's
claim stores is sealed as the outcomes are (`retrysafe._encryption`), and so is the error an
attempt leaves on the row. Each is bound to its own identity in the namespace
`retrysafe.resumable` (the operation's digest as scope, `request` or `last_error` as key), so a
sealed request copied onto an outcome, or onto another operation, does not open there.

A request is what the completer builds the phases from, so it fails closed: one that does not
open with the keys, or one that is sealed while the completer has no keys, raises
`RecordUnreadableError`, which counts as a failed attempt (never run from ciphertext, never
finished with its outcome in clear). A last error is only shown: one that does not open is
shown as such, never raised.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

from retrysafe._encryption import SEALING_OVERHEAD, Keyring, sealed_key_id
from retrysafe._errors import RecordUnreadableError
from retrysafe._record import Identity
from retrysafe.completer._table import ResumableRow

__all__ = ["REQUEST_NAMESPACE", "RowSealing"]

REQUEST_NAMESPACE: Final = "retrysafe.resumable"
"""The namespace of the identities a request and a last error are sealed for."""
_SEALED_TEXT: Final = "rse1:"


@dataclass(frozen=True, slots=True)
class RowSealing:
    """Seals and opens what the resumable table stores of one operation.

    Args:
        keyring: the keys (None: stored in clear).
    """

    keyring: Keyring | None

    def seal_request(self, identity: Identity, request: bytes) -> bytes:
        """Return `request` as the row stores it: sealed when there are keys."""
        if self.keyring is None:
            return request
        return self.keyring.seal(_bound(identity, "request"), request)

    def open_request(self, identity: Identity, stored: bytes) -> bytes:
        """Return the request the row stores, in clear.

        Raises:
            RecordUnreadableError: it does not open with the keys, or it is sealed and there
                are none.
        """
        if self.keyring is not None:
            return self.keyring.open(_bound(identity, "request"), stored)
        key_id = sealed_key_id(stored)
        if key_id is not None and len(stored) >= SEALING_OVERHEAD:
            raise RecordUnreadableError(
                f"The stored request of {identity.namespace!r} key {identity.key!r} is "
                f"encrypted (key {key_id.hex()}): run the completer with the keys of the store "
                "(encryption_key_env= in its URL, or encryption=)."
            )
        return stored

    def seal_error(self, identity: Identity, error: str | None) -> str | None:
        """Return the last error as the row stores it: sealed (as text) when there are keys."""
        if self.keyring is None or error is None:
            return error
        sealed = self.keyring.seal(
            _bound(identity, "last_error"), error.encode("utf-8", "surrogatepass")
        )
        return _SEALED_TEXT + base64.urlsafe_b64encode(sealed).decode("ascii")

    def open_error(self, identity: Identity, stored: str | None) -> str | None:
        """Return the last error the row stores, in clear; one that does not open says so."""
        if stored is None or not stored.startswith(_SEALED_TEXT):
            return stored
        if self.keyring is None:
            return "(encrypted: the completer has no keys to show it)"
        try:
            sealed = base64.urlsafe_b64decode(stored[len(_SEALED_TEXT) :])
            return self.keyring.open(_bound(identity, "last_error"), sealed).decode(
                "utf-8", "surrogatepass"
            )
        except (binascii.Error, ValueError, RecordUnreadableError) as error:
            return f"(encrypted, and does not open: {error})"

    def open_row(self, row: ResumableRow) -> ResumableRow:
        """Return `row` with its request and last error in clear (raises as `open_request`)."""
        return ResumableRow(
            identity=row.identity,
            fingerprint=row.fingerprint,
            request=self.open_request(row.identity, row.request),
            attempts=row.attempts,
            attention_at=row.attention_at,
            last_error=self.open_error(row.identity, row.last_error),
        )


def _bound(identity: Identity, part: str) -> Identity:
    """Return the identity `part` of `identity`'s row is sealed for."""
    return Identity(REQUEST_NAMESPACE, identity.digest(), part)
