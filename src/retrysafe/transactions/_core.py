"""Transactions and their backend protocols, in both colours: where the faces import them.

`AsyncTransaction` and the protocols its backends implement are written once, async, in
`_async/transaction.py`; `Transaction` and its protocols are generated from it into
`_sync/transaction.py` by `scripts/unasync.py`. What both colours share, without I/O, is
`_state.py`; the defaults are the shared flow's (`retrysafe._flow`).
"""

from __future__ import annotations

from retrysafe.transactions._async.transaction import (
    AsyncBackend,
    AsyncRecords,
    AsyncRecordStatements,
    AsyncTransaction,
)
from retrysafe.transactions._state import (
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    ClaimOptions,
    ClaimSettings,
    check_settings,
    refusal,
)
from retrysafe.transactions._sync.transaction import (
    Backend,
    Records,
    RecordStatements,
    Transaction,
)

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_RETENTION",
    "AsyncBackend",
    "AsyncRecordStatements",
    "AsyncRecords",
    "AsyncTransaction",
    "Backend",
    "ClaimOptions",
    "ClaimSettings",
    "RecordStatements",
    "Records",
    "Transaction",
    "check_settings",
    "refusal",
]
