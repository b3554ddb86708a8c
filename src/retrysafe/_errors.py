"""Every error retrysafe raises, under one root.

IdempotencyError
├── InvalidKeyError             the Idempotency-Key value is malformed or breaks the key policy
├── KeyMismatchError            the key was used with a different request (fingerprint)
├── InFlightError               the key's first request is still running
├── FencedError                 the caller's token no longer holds the record
├── OutcomeError                the outcome cannot be stored (too large, not serializable)
├── ConfigurationError          a setting or a store URL is invalid (also a ValueError)
├── NotReplayableError          a client retry is due but the request body is a spent stream
└── StoreError                  the store failed to answer correctly
    └── StoreUnavailableError   the store cannot be reached within its timeout

Importing a module whose optional dependencies are missing raises an `ImportError` instead
(`retrysafe.MissingExtraError` for an extra), before anything can run.

Import them from `retrysafe`: each names it as its `__module__` (set in `retrysafe/__init__.py`),
so a traceback reads `retrysafe.KeyMismatchError: ...` and a pickled error loads from there.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "FencedError",
    "IdempotencyError",
    "InFlightError",
    "InvalidKeyError",
    "KeyMismatchError",
    "NotReplayableError",
    "OutcomeError",
    "RecordUnreadableError",
    "StoreClosedError",
    "StoreError",
    "StoreUnavailableError",
]


class IdempotencyError(Exception):
    """The root of every error that retrysafe raises."""


class InvalidKeyError(IdempotencyError):
    """The Idempotency-Key value is malformed or breaks the configured key policy."""


class KeyMismatchError(IdempotencyError):
    """The key was already used with a request whose fingerprint differs."""


class InFlightError(IdempotencyError):
    """The first request with this key is still running.

    Args:
        retry_after: seconds after which a retry may find the outcome.
        lease_expires_at: when the running request's lease ends, on its store's clock (None:
            not known), after which a retry may take the key over.
    """

    def __init__(
        self, message: str, *, retry_after: float = 1.0, lease_expires_at: float | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.lease_expires_at = lease_expires_at


class FencedError(IdempotencyError):
    """The caller's fencing token no longer holds the record (its lease was taken over)."""


class OutcomeError(IdempotencyError):
    """The outcome cannot be stored: too large, or not serializable."""


class ConfigurationError(IdempotencyError, ValueError):
    """A setting or a store URL is invalid."""


class NotReplayableError(IdempotencyError):
    """An attempt failed and the request body is a stream that cannot be sent again.

    The request may or may not have reached the server; it was not retried because the body
    would not be the same. Send the body as bytes (or read it first) to make it retryable.
    The original error is the `__cause__`.
    """


class StoreError(IdempotencyError):
    """The store failed to answer correctly."""


class RecordUnreadableError(StoreError):
    """A stored record does not open as written: its sealed outcome was sealed with a key the
    store was not given, or was altered or moved to another record. It is never replayed."""


class StoreClosedError(StoreError):
    """The store was closed: nothing can be stored through it any more. An outcome it could not
    store is not held (B19): its key stays in flight until its lease ends."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached, or did not answer within its timeout."""


class OutcomeUnknownError(StoreUnavailableError):
    """A store call that may have been applied though its reply was lost: a transaction's
    COMMIT that got no reply. Retry with the same key only: it replays the outcome if it was
    applied, and runs if it was not; a new key could apply it twice."""


class ReplicaShortfallError(StoreUnavailableError):
    """A Redis write that fewer replicas than the store's `min_replicas` confirmed in time: it
    is not used (docs/stores.md, "Replicas and failover")."""
