"""Operations that need a person: the marks the completer leaves where `keys` and the console see.

When the completer gives up on an operation (its attempts are spent), it marks the row in the
resumable table, which is what it reads itself, and writes a small record in the records table
in the namespace `retrysafe.attention` (`ATTENTION_NAMESPACE`), in the same transaction. Every
reader of a store sees that record, whatever the backend and through the store's own API: the
scope is the operation's identity digest, the key the fencing token it was left with, and the
outcome a JSON document (`Attention`). It is kept as long as the operation's record.

A mark stands only while the operation is still as the completer left it: in flight with the
same token. Once anything moves it (a late client retry takes it over, `retrysafe complete
--retry` runs it, `keys delete` removes it) the mark no longer matches, and readers pass over
it until it expires; nothing ever has to delete it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from retrysafe._record import Identity, Record, State
from retrysafe.stores import Store
from retrysafe.transactions._sync.transaction import Backend

__all__ = ["ATTENTION_NAMESPACE", "Attention", "needing_attention", "write_mark"]

ATTENTION_NAMESPACE: Final = "retrysafe.attention"
"""The namespace of the completer's marks; `keys` and the console leave it out of listings."""
_FINGERPRINT: Final = "attention"
_MIN_RETENTION: Final = 60.0
_SCANNED: Final = 10_000


@dataclass(frozen=True, slots=True)
class Attention:
    """An operation the completer gave up on, as it still stands.

    Attributes:
        record: the operation's record (in flight, its lease expired).
        attempts: how many times the completer ran it.
        last_error: the last attempt's error, one line.
        marked_at: when the completer gave up (seconds since the epoch).
    """

    record: Record
    attempts: int
    last_error: str | None
    marked_at: float


def write_mark(
    backend: Backend, record: Record, *, attempts: int, last_error: str | None, now: float
) -> None:
    """Write the mark for `record` in the transaction open on `backend`."""
    identity = Identity(ATTENTION_NAMESPACE, record.identity.digest(), record.token)
    retention = max(record.expires_at - now, _MIN_RETENTION)
    claim = backend.claim(identity, _FINGERPRINT, now=now, lease=1.0, retention=retention)
    if not claim.acquired:  # marked already, for this very token
        return
    mark = {
        "namespace": record.identity.namespace,
        "scope": record.identity.scope,
        "key": record.identity.key,
        "attempts": attempts,
        "last_error": last_error,
        "marked_at": now,
    }
    outcome = json.dumps(mark, ensure_ascii=False).encode("utf-8", "surrogatepass")
    backend.complete(identity, claim.record.token, outcome, now=now, retention=retention)


def needing_attention(store: Store) -> list[Attention]:
    """Return the operations that need a person in `store`, the longest waiting first."""
    found: dict[str, Attention] = {}
    for mark in store.list_records(namespace=ATTENTION_NAMESPACE, limit=_SCANNED):
        attention = _read(store, mark)
        if attention is not None:
            found[attention.record.identity.digest()] = attention
    return sorted(found.values(), key=lambda a: a.marked_at)


def _read(store: Store, mark: Record) -> Attention | None:
    """Return what `mark` says, if its operation is still as the completer left it."""
    if mark.state is not State.DONE or not mark.outcome:
        return None
    try:
        data = json.loads(mark.outcome.decode("utf-8", "surrogatepass"))
        identity = Identity(str(data["namespace"]), str(data["scope"]), str(data["key"]))
        attempts, marked_at = int(data["attempts"]), float(data["marked_at"])
    except (ValueError, KeyError, TypeError):
        return None  # not a mark this version wrote: nothing to show
    record = store.get(identity)
    if record is None or record.state is not State.IN_FLIGHT or record.token != mark.identity.key:
        return None
    error = data.get("last_error")
    return Attention(record, attempts, None if error is None else str(error), marked_at)
