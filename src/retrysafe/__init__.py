"""retrysafe: make retries safe.

For one (scope, key), the side effect runs at most once, and every caller with that key gets
the one outcome.
"""

from retrysafe._clock import Clock, ManualClock, SystemClock
from retrysafe._decorator import idempotent
from retrysafe._engine import Decision, decide
from retrysafe._errors import (
    ConfigurationError,
    FencedError,
    IdempotencyError,
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    NotReplayableError,
    OutcomeError,
    StoreError,
    StoreUnavailableError,
)
from retrysafe._record import Claim, Identity, Record, State
from retrysafe._serializer import JSONSerializer, Serializer
from retrysafe.stores import AsyncStore, Store, StoreStats, open_async_store, open_store

__all__ = [
    "AsyncStore",
    "Claim",
    "Clock",
    "ConfigurationError",
    "Decision",
    "FencedError",
    "IdempotencyError",
    "Identity",
    "InFlightError",
    "InvalidKeyError",
    "JSONSerializer",
    "KeyMismatchError",
    "ManualClock",
    "NotReplayableError",
    "OutcomeError",
    "Record",
    "Serializer",
    "State",
    "Store",
    "StoreError",
    "StoreStats",
    "StoreUnavailableError",
    "SystemClock",
    "decide",
    "idempotent",
    "open_async_store",
    "open_store",
]

__version__ = "0.1.0"
