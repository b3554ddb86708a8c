"""What `retrysafe keys` reads from a store and how it shows records: the queries behind the
commands (the internal namespace hidden, B8, and the event records of
`retrysafe.observe.events`), a record as JSON, and its state in words.

On an encrypted store, a record whose outcome does not open (sealed with a key the store was
not opened with, altered, or stored in clear) is listed, shown and deleted as any other, its
outcome marked unreadable (`UnreadableRecord`): it never stops the commands for the others."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, cast

from retrysafe._encryption import UnreadableRecord, sealed_key_id
from retrysafe._errors import FencedError
from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._record import Identity, Record, State
from retrysafe._versions import ENTITIES_SUFFIX
from retrysafe.cli._common import EXIT_USAGE, fail, human_duration
from retrysafe.cli._render import describe_outcome
from retrysafe.cli._scopes import scope_matches
from retrysafe.completer._attention import ATTENTION_NAMESPACE
from retrysafe.observe.events import EVENTS_NAMESPACE
from retrysafe.stores import Store
from retrysafe.stores.base import StoreStats, stats_of

__all__ = [
    "COUNT_LIMIT",
    "INTERNAL",
    "SEARCH_LIMIT",
    "app_stats",
    "count_matching",
    "delete_as_read",
    "find",
    "hidden",
    "internal_records",
    "iso",
    "lease_text",
    "outcome_json",
    "read_record",
    "record_json",
    "resolve_scope",
    "state_text",
    "visible_records",
]

SEARCH_LIMIT: Final = 10_000
"""Records scanned to find a key, or a scope by its prefix, when not given in full."""
COUNT_LIMIT: Final = SEARCH_LIMIT
"""Records counted, at most, for the listing's total when the store's counts cannot answer."""
INTERNAL: Final = SECRET_IDENTITY.namespace
_OWN: Final = (INTERNAL, EVENTS_NAMESPACE, ATTENTION_NAMESPACE)
"""retrysafe's own namespaces, listed only when asked for by name and never counted as the
app's: the scope secret, the events an `EventRecorder` writes, and the completer's marks."""


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
        "outcome_unreadable": isinstance(record, UnreadableRecord),
    }


def read_record(store: Store, identity: Identity) -> Record | None:
    """Return the live record of `identity` as the listings show it: from an encrypted store,
    one whose outcome does not open comes back marked (`UnreadableRecord`), never raising."""
    inspect = getattr(store, "inspect", None)  # an encrypted store's, or through its cache
    return store.get(identity) if inspect is None else cast(Record | None, inspect(identity))


def hidden(record: Record, namespace: str | None) -> bool:
    """Whether `record` is left out: retrysafe's own (the secret, the events, a versioned
    consumer's entities), and its namespace was not asked for."""
    own = record.identity.namespace
    return (own in _OWN or own.endswith(ENTITIES_SUFFIX)) and namespace != own


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
    """Return the store's counts without retrysafe's own records (the secret, the events,
    the completer's marks)."""
    events = store.list_records(namespace=EVENTS_NAMESPACE, limit=SEARCH_LIMIT)
    events += store.list_records(namespace=ATTENTION_NAMESPACE, limit=SEARCH_LIMIT)
    whole, internal = store.stats(), stats_of(internal_records(store) + events)
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
    """Return the stored outcome as JSON-ready data; the scope secret is never printed, nor an
    outcome that does not open with the store's keys (its size, why, and its key's id)."""
    if record.identity.namespace == INTERNAL and record.size:
        return {"kind": "secret", "bytes": record.size}
    if isinstance(record, UnreadableRecord):
        key_id = sealed_key_id(record.stored)
        sealed = {} if key_id is None else {"key_id": key_id.hex()}
        return {"kind": "unreadable", **sealed, "bytes": record.size, "message": record.reason}
    if record.outcome is None:
        return None
    key_id = sealed_key_id(record.outcome)
    if key_id is not None:  # a store opened without its keys: say so, never the ciphertext
        return {"kind": "encrypted", "key_id": key_id.hex(), "bytes": len(record.outcome)}
    return describe_outcome(record.outcome)


def find(store: Store, key: str, scope: str | None, namespace: str | None) -> Record:
    """Return the one live record with `key`, in the scope (or the scope a unique prefix names)
    and namespace given; fail (exit 1) if there is none, and (exit 2) if there are several."""
    if scope is not None and namespace is not None:
        record = read_record(store, Identity(namespace, scope, key))
        if record is not None:
            return record
    matches = _with_key(
        store.list_records(namespace=namespace, scope=scope, limit=SEARCH_LIMIT), key, namespace
    )
    if not matches and scope is not None:  # not a whole scope: a prefix of one?
        matches = [
            r
            for r in _with_key(
                store.list_records(namespace=namespace, limit=SEARCH_LIMIT), key, namespace
            )
            if scope_matches(r.identity.scope, scope)
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


def delete_as_read(store: Store, record: Record) -> bool:
    """Delete `record` only as it was read; return whether it was deleted.

    An in-flight claim is released with its fencing token (`Store.release`), in one atomic
    step: if a retry took the claim over, or its request finished, since it was read, nothing
    is deleted (False), never the retry's live claim. A done record is deleted by its identity
    (False: already gone), without a condition: had it expired and a retry claimed its key
    since it was read, that claim would go (the stores have no conditional delete).
    """
    if record.state is not State.IN_FLIGHT:
        return store.delete(record.identity)
    try:
        store.release(record.identity, record.token)
    except FencedError:
        return False
    return True


def _with_key(records: list[Record], key: str, namespace: str | None) -> list[Record]:
    return [r for r in records if r.identity.key == key and not hidden(r, namespace)]


def resolve_scope(store: Store, given: str, namespace: str | None) -> str:
    """Return the scope that `given` names: itself if records have it, else the one scope it
    is a unique prefix of among the newest records; fail (exit 2) naming them if several."""
    if store.list_records(namespace=namespace, scope=given, limit=1):
        return given
    scopes = sorted(
        {
            r.identity.scope
            for r in store.list_records(namespace=namespace, limit=SEARCH_LIMIT)
            if not hidden(r, namespace) and scope_matches(r.identity.scope, given)
        }
    )
    if len(scopes) > 1:
        named = ", ".join(map(repr, scopes[:5])) + (", ..." if len(scopes) > 5 else "")
        fail(
            f"Scope {given!r} is the start of {len(scopes)} scopes ({named}); "
            "give more of it, or the whole scope.",
            EXIT_USAGE,
        )
    return scopes[0] if scopes else given


def count_matching(
    store: Store,
    *,
    namespace: str | None,
    scope: str | None,
    state: State | None,
    created_before: float | None,
) -> int | None:
    """Return how many live records match the filters (retrysafe's own left out), or None
    for more than COUNT_LIMIT. Without filters but the state, the store's counts answer."""
    if namespace is None and scope is None and created_before is None:
        counts = app_stats(store)
        return {
            None: counts.in_flight + counts.done,
            State.IN_FLIGHT: counts.in_flight,
            State.DONE: counts.done,
        }[state]
    records = visible_records(
        store,
        namespace=namespace,
        scope=scope,
        state=state,
        created_before=created_before,
        limit=COUNT_LIMIT + 1,
    )
    return len(records) if len(records) <= COUNT_LIMIT else None


def state_text(record: Record, now: float) -> str:
    if record.state is State.DONE:
        return "done (outcome unreadable)" if isinstance(record, UnreadableRecord) else "done"
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
    """Return `timestamp` as an ISO 8601 UTC time, or as its number when no date holds it (a
    record kept past year 9999 by a release that did not bound retention): never raises."""
    try:
        when = datetime.fromtimestamp(timestamp, UTC)
    except (ValueError, OverflowError, OSError):
        return str(timestamp)
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")
