"""What the console shows and does, as JSON-ready data: the JSON API returns it as it is and the
pages render it, so the two never disagree.

The queries are the `keys` commands' own (`retrysafe.cli._records`): retrysafe's internal
namespace (the scope secret) is left out, and can be neither shown nor deleted here. The event
records an `EventRecorder` writes (`retrysafe.observe.events`) are left out of the counts too,
and shown as the recent replays and mismatches instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, cast

from retrysafe._record import Identity, Record, State
from retrysafe.cli._records import (
    INTERNAL,
    SEARCH_LIMIT,
    app_stats,
    delete_as_read,
    iso,
    outcome_json,
    read_record,
    record_json,
    visible_records,
)
from retrysafe.completer._attention import Attention, needing_attention
from retrysafe.console._refs import identity_ref, version
from retrysafe.observe.events import EVENTS_NAMESPACE, Event, read_events
from retrysafe.stores import Store

__all__ = [
    "EVENTS_SHOWN",
    "FILTERS",
    "PREVIEW_CHARS",
    "ConsoleError",
    "RecordChangedError",
    "delete_record",
    "namespace_records",
    "purge_expired",
    "recent_events",
    "record_detail",
    "short_token",
    "summary",
]

PREVIEW_CHARS: Final = 4096
"""Characters of a stored body (or any other long text of an outcome) shown at most."""
STUCK_SHOWN: Final = 100
"""Stuck records listed on the overview, the longest expired first."""
FILTERS: Final = ("all", "in_flight", "stuck", "done")
"""The record filters of a namespace's listing: `stuck` is in flight with its lease expired."""
_PURGE_BATCH: Final = 1000
_LONG_FIELDS: Final = (
    "body", "body_base64", "text", "base64", "repr", "message", "exceptions", "error",
)  # fmt: skip
EVENTS_SHOWN: Final = 50
"""Recorded events (replays, mismatches, conflicts) shown at most, the newest first."""
_NOT_RECORDED: Final = (
    "Nothing records replays and mismatches where the console can read them: the store keeps "
    "only each key's record. "
    "To record them here, add retrysafe.observe.events.EventRecorder(STORE_URL) to your app's "
    "observers=[...] (see docs/console.md). retrysafe's other observers report every decision "
    'to your monitoring: retrysafe_requests_total{decision="replay"} and '
    '{decision="mismatch"} in Prometheus, spans in OpenTelemetry, or the '
    "retrysafe.decisions log (see docs/observability.md)."
)
_RECORDED: Final = (
    f"The newest replays, mismatches and conflicts (at most {EVENTS_SHOWN}) that an "
    f"EventRecorder stored in the namespace {EVENTS_NAMESPACE!r}, kept for its retention."
)


class ConsoleError(Exception):
    """A request the console refuses: `status` and a one-line `detail` for problem+json."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RecordChangedError(ConsoleError):
    """A delete refused because the record is not the one its confirmation showed: `record` is
    the record as it is now, to confirm again."""

    def __init__(self, record: dict[str, object]) -> None:
        super().__init__(
            409,
            "Nothing was deleted: the record changed since its confirmation was read (a retry "
            "took its claim over, or its request finished). Read it again and confirm the "
            "record as it is now.",
        )
        self.record = record


def short_token(token: str) -> str:
    """Return a fencing token as the console shows it: its first 8 characters."""
    return token if len(token) <= 8 else f"{token[:8]}…"


def summary(store: Store) -> dict[str, object]:
    """Return the overview: totals, counts per namespace, the stuck records, the operations
    that need a person (the completer gave up on them), and the events."""
    now = store.clock.now()
    totals = app_stats(store)
    records = visible_records(
        store, namespace=None, scope=None, state=None, created_before=None, limit=SEARCH_LIMIT
    )
    stuck = sorted((r for r in records if _stuck(r, now)), key=lambda r: r.lease_expires_at)
    attention = needing_attention(store)
    oldest = totals.oldest_in_flight_at
    return {
        "generated_at": iso(now),
        "totals": {
            "in_flight": totals.in_flight,
            "done": totals.done,
            "total": totals.in_flight + totals.done,
            "bytes_stored": totals.bytes_stored,
            "oldest_in_flight_at": None if oldest is None else iso(oldest),
        },
        "scanned": len(records),
        "scan_complete": len(records) < SEARCH_LIMIT,
        "namespaces": _per_namespace(records, now),
        "stuck": [_listed(r, now) for r in stuck[:STUCK_SHOWN]],
        "stuck_total": len(stuck),
        "needs_attention": [_attention(a, now) for a in attention[:STUCK_SHOWN]],
        "needs_attention_total": len(attention),
        "events": recent_events(store, now),
    }


def recent_events(store: Store, now: float) -> dict[str, object]:
    """Return the newest recorded events (at most EVENTS_SHOWN), or why there are none."""
    events = read_events(store, limit=EVENTS_SHOWN)
    return {
        "recorded": bool(events),
        "recent": [_event(event, now) for event in events],
        "detail": _RECORDED if events else _NOT_RECORDED,
    }


def _event(event: Event, now: float) -> dict[str, object]:
    return {
        "at": iso(event.at),
        "age_seconds": round(now - event.at, 3),
        "decision": event.decision,
        "face": event.face,
        "namespace": event.namespace,
        "key": event.key,
        "scope_digest": event.scope,
    }


def namespace_records(
    store: Store, namespace: str, state: str = "all", limit: int = 200
) -> dict[str, object]:
    """Return the newest `limit` records of `namespace` that pass the filter (`FILTERS`)."""
    if state not in FILTERS:
        raise ConsoleError(400, f"Unknown filter {state!r}: use one of {', '.join(FILTERS)}.")
    if namespace == INTERNAL:
        raise ConsoleError(403, f"{INTERNAL!r} holds retrysafe's scope secret, not records.")
    now = store.clock.now()
    wanted = {"in_flight": State.IN_FLIGHT, "stuck": State.IN_FLIGHT, "done": State.DONE}
    records = visible_records(
        store,
        namespace=namespace,
        scope=None,
        state=wanted.get(state),
        # Stuck ones are a part of those in flight: scan as many as a search does.
        created_before=None,
        limit=SEARCH_LIMIT if state == "stuck" else limit,
    )
    if state == "stuck":
        records = [r for r in records if _stuck(r, now)][:limit]
    return {
        "namespace": namespace,
        "filter": state,
        "limit": limit,
        "records": [_listed(r, now) for r in records],
    }


def record_detail(store: Store, identity: Identity) -> dict[str, object]:
    """Return one record in full, its outcome decoded and its long texts cut to PREVIEW_CHARS."""
    record = _existing(store, identity)
    now = store.clock.now()
    data = _listed(record, now)
    data["outcome"] = _preview(outcome_json(record))
    return data


def delete_record(store: Store, identity: Identity, confirmed: str) -> dict[str, object]:
    """Delete one record, whatever its state, if it is still the one whose `version` was
    `confirmed`; say whether its lease was still live.

    An in-flight claim is released with its fencing token, so a claim that a retry took over
    since is never deleted, even in the instant between the check and the delete. A done
    record is deleted by its identity: a record that expired, and whose key a retry claimed,
    in that instant would lose that claim (the stores have no conditional delete).

    Raises:
        RecordChangedError: the record is another one now (nothing was deleted).
    """
    record = _existing(store, identity)
    now = store.clock.now()
    deleted = version(record) == confirmed and delete_as_read(store, record)
    if not deleted:
        current = read_record(store, identity)
        if current is not None:
            raise RecordChangedError(_listed(current, store.clock.now()))
    return {
        "deleted": deleted,
        "lease_was_live": record.state is State.IN_FLIGHT and record.lease_expires_at > now,
        "record": _listed(record, now),
    }


def purge_expired(store: Store) -> dict[str, object]:
    """Delete every record past its retention, in bounded batches; return how many."""
    total = 0
    while True:
        purged = store.purge_expired(limit=_PURGE_BATCH)
        total += purged
        if purged < _PURGE_BATCH:
            return {"purged": total}


def _existing(store: Store, identity: Identity) -> Record:
    if identity.namespace == INTERNAL:
        raise ConsoleError(403, f"{INTERNAL!r} holds retrysafe's scope secret: never shown here.")
    record = read_record(store, identity)
    if record is None:
        raise ConsoleError(
            404,
            f"No live record for key {identity.key!r} in scope {identity.scope!r}, "
            f"namespace {identity.namespace!r}.",
        )
    return record


def _stuck(record: Record, now: float) -> bool:
    return record.state is State.IN_FLIGHT and record.lease_expires_at <= now


def _listed(record: Record, now: float) -> dict[str, object]:
    """Return a record as `keys show --json` does, its fencing token shortened, and for a
    stuck one how long ago its lease expired; with the `ref` that names it in the pages' links
    and forms, and the `version` a delete is bound to."""
    data = record_json(record, now)
    data["ref"] = identity_ref(record.identity)
    data["version"] = version(record)
    data["lease_owner"] = short_token(record.token)
    data["stuck"] = _stuck(record, now)
    data["lease_expired_seconds"] = (
        round(now - record.lease_expires_at, 3) if data["stuck"] else None
    )
    return data


@dataclass
class _Counts:
    """One namespace's row of the overview, counted record by record."""

    in_flight: int = 0
    stuck: int = 0
    done: int = 0
    bytes_stored: int = 0
    oldest_in_flight_at: float | None = None

    def add(self, record: Record, now: float) -> None:
        self.bytes_stored += record.size
        if record.state is not State.IN_FLIGHT:
            self.done += 1
            return
        self.in_flight += 1
        self.stuck += _stuck(record, now)
        oldest = self.oldest_in_flight_at
        self.oldest_in_flight_at = min(record.created_at, oldest or record.created_at)

    def as_json(self, namespace: str) -> dict[str, object]:
        oldest = self.oldest_in_flight_at
        return {
            "namespace": namespace,
            "in_flight": self.in_flight,
            "stuck": self.stuck,
            "done": self.done,
            "bytes_stored": self.bytes_stored,
            "oldest_in_flight_at": None if oldest is None else iso(oldest),
        }


def _attention(attention: Attention, now: float) -> dict[str, object]:
    """Return an operation the completer gave up on: its record, its attempts, its error."""
    data = _listed(attention.record, now)
    data["needs_attention"] = True
    data["attempts"] = attention.attempts
    data["last_error"] = attention.last_error
    return data


def _per_namespace(records: Iterable[Record], now: float) -> list[dict[str, object]]:
    counts: dict[str, _Counts] = {}
    for record in records:
        counts.setdefault(record.identity.namespace, _Counts()).add(record, now)
    return [counts[name].as_json(name) for name in sorted(counts)]


def _preview(outcome: dict[str, object] | None) -> dict[str, object] | None:
    """Return `outcome` with each long text cut to PREVIEW_CHARS (`truncated` names them)."""
    if outcome is None:
        return None
    shown = dict(outcome)
    cut = [name for name in _LONG_FIELDS if _cut(shown, name)]
    cut += [name for name in ("args", "headers") if _cut_list(shown, name)]
    value = shown.get("value")
    if value is not None and len(json.dumps(value)) > PREVIEW_CHARS:
        del shown["value"]  # its repr, cut, stands for it
        cut.append("value")
    if cut:
        shown["truncated"] = cut
    return shown


def _cut(data: dict[str, object], name: str) -> bool:
    text = data.get(name)
    if not isinstance(text, str) or len(text) <= PREVIEW_CHARS:
        return False
    data[name] = text[:PREVIEW_CHARS]
    return True


def _cut_list(data: dict[str, object], name: str) -> bool:
    """Cut the list `name` (an exception's `args`, a response's `headers`) to PREVIEW_CHARS
    characters of text in all: its strings cut, its later items left out. A header stays a
    [name, value] pair."""
    items = data.get(name)
    if not isinstance(items, list) or len(json.dumps(items)) <= PREVIEW_CHARS:
        return False
    left = [PREVIEW_CHARS]
    if name == "headers":
        pairs = cast(Iterable[list[object]], _while(items, left))
        data[name] = [[_clipped(part, left) for part in pair] for pair in pairs]
    else:
        data[name] = _clipped(items, left)
    return True


def _while(items: Iterable[object], left: list[int]) -> Iterable[object]:
    """Yield `items` while `left[0]` characters remain, each counted as one more (the
    separator): a list of empty strings ends too."""
    for item in items:
        if left[0] <= 0:
            return
        left[0] -= 1
        yield item


def _clipped(tree: object, left: list[int]) -> object:
    """Return the JSON-ready `tree` cut to the `left[0]` characters of text that remain
    (counted down): strings cut, lists and objects ended."""
    if isinstance(tree, str):
        left[0] -= len(tree)
        return tree[: max(0, left[0] + len(tree))]
    if isinstance(tree, list):
        return [_clipped(item, left) for item in _while(tree, left)]
    if isinstance(tree, dict):
        shown = {}
        for key in _while(tree, left):
            left[0] -= len(str(key))
            shown[key] = _clipped(tree[key], left)
        return shown
    left[0] -= len(str(tree))
    return tree
