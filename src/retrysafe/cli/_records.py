"""What `retrysafe keys` reads from a store and how it shows records: the queries behind the
commands (the internal namespace hidden, B8), a record as JSON, and its state in words."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._record import Identity, Record, State
from retrysafe.cli._common import EXIT_USAGE, fail, human_duration
from retrysafe.cli._render import describe_outcome
from retrysafe.stores import Store
from retrysafe.stores.base import StoreStats, stats_of

__all__ = [
    "INTERNAL",
    "SEARCH_LIMIT",
    "app_stats",
    "find",
    "hidden",
    "internal_records",
    "iso",
    "lease_text",
    "outcome_json",
    "record_json",
    "state_text",
    "visible_records",
]

SEARCH_LIMIT: Final = (
    10_000  # records scanned to find a key when its scope or namespace is not given
)
INTERNAL: Final = SECRET_IDENTITY.namespace


def record_json(record: Record, now: float) -> dict[str, object]:
    """Return a record as JSON-ready data (times as ISO 8601 UTC, with ages in seconds)."""
    return {
        "namespace": record.identity.namespace,
        "scope": record.identity.scope,
        "key": record.identity.key,
        "state": record.state.value,
        "fingerprint": record.fingerprint,
        "lease_owner": record.token,
        "created_at": iso(record.created_at),
        "age_seconds": round(now - record.created_at, 3),
        "lease_expires_at": iso(record.lease_expires_at),
        "lease_live": record.state is State.IN_FLIGHT and record.lease_expires_at > now,
        "expires_at": iso(record.expires_at),
        "size": record.size,
        "recovery_point": record.recovery_point,
    }


def hidden(record: Record, namespace: str | None) -> bool:
    """Whether `record` is left out: retrysafe's own, and its namespace was not asked for."""
    return record.identity.namespace == INTERNAL and namespace != INTERNAL


def visible_records(
    store: Store,
    *,
    namespace: str | None,
    scope: str | None,
    state: State | None,
    created_before: float | None,
    limit: int,
) -> list[Record]:
    """Return the newest `limit` records matching the filters, without the hidden ones."""
    asked = limit
    while True:
        records = store.list_records(
            namespace=namespace,
            scope=scope,
            state=state,
            created_before=created_before,
            limit=asked,
        )
        visible = [r for r in records if not hidden(r, namespace)]
        if len(visible) >= limit or len(records) < asked:
            return visible[:limit]
        asked = limit + len(records) - len(visible)  # more than before: some were hidden


def internal_records(store: Store) -> list[Record]:
    return store.list_records(namespace=INTERNAL, limit=SEARCH_LIMIT)


def app_stats(store: Store) -> StoreStats:
    """Return the store's counts without retrysafe's own records."""
    whole, internal = store.stats(), stats_of(internal_records(store))
    oldest = whole.oldest_in_flight_at
    if oldest is not None and oldest == internal.oldest_in_flight_at:  # find the app's oldest
        claims = store.list_records(state=State.IN_FLIGHT, limit=SEARCH_LIMIT)
        oldest = min((r.created_at for r in claims if not hidden(r, None)), default=None)
    return StoreStats(
        in_flight=whole.in_flight - internal.in_flight,
        done=whole.done - internal.done,
        bytes_stored=whole.bytes_stored - internal.bytes_stored,
        oldest_in_flight_at=oldest,
    )


def outcome_json(record: Record) -> dict[str, object] | None:
    """Return the stored outcome as JSON-ready data; the scope secret is never printed."""
    if record.outcome is None:
        return None
    if record.identity.namespace == INTERNAL:
        return {"kind": "secret", "bytes": len(record.outcome)}
    return describe_outcome(record.outcome)


def find(store: Store, key: str, scope: str | None, namespace: str | None) -> Record:
    if scope is not None and namespace is not None:
        record = store.get(Identity(namespace, scope, key))
        if record is None:
            fail(f"No live record for key {key!r} in scope {scope!r}, namespace {namespace!r}.")
        return record
    matches = [
        r
        for r in store.list_records(namespace=namespace, scope=scope, limit=SEARCH_LIMIT)
        if r.identity.key == key and not hidden(r, namespace)
    ]
    if not matches:
        where = "".join(
            f", {name} {value!r}"
            for name, value in (("scope", scope), ("namespace", namespace))
            if value is not None
        )
        fail(f"No live record for key {key!r}{where}.")
    if len(matches) > 1:
        places = "; ".join(
            f"scope {r.identity.scope!r} namespace {r.identity.namespace!r}" for r in matches[:5]
        )
        fail(
            f"Key {key!r} exists in {len(matches)} places ({places}); "
            "pass --scope and --namespace to choose one.",
            EXIT_USAGE,
        )
    return matches[0]


def state_text(record: Record, now: float) -> str:
    if record.state is State.DONE:
        return "done"
    if record.lease_expires_at > now:
        return f"in flight ({human_duration(record.lease_expires_at - now)} left)"
    return "in flight (lease expired)"


def lease_text(record: Record, now: float) -> str:
    owner = record.token[:12]
    if record.state is State.DONE:
        return f"{owner} (completed)"
    if record.lease_expires_at > now:
        return f"{owner} (lease {human_duration(record.lease_expires_at - now)} left)"
    return f"{owner} (lease expired {human_duration(now - record.lease_expires_at)} ago)"


def iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
