"""`retrysafe keys`: inspect and clean a store (list, show, delete, purge, stats).

The namespace `retrysafe.internal` holds the scope secret the HTTP middleware keeps in the store
when no `scope_secret` is configured (B8). It is not the app's data: `list`, `show` and `stats`
leave it out unless `--namespace retrysafe.internal` is given, and `delete` refuses to remove
it, since without it every keyed request fails closed. `purge` never reaches it: its retention
is a century.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from retrysafe._flow.secret import SECRET_IDENTITY
from retrysafe._record import Identity, Record, State
from retrysafe.cli._common import (
    EXIT_USAGE,
    console,
    errors_as_one_line,
    fail,
    human_bytes,
    human_duration,
    literal,
    parse_duration,
    print_json,
)
from retrysafe.cli._render import describe_outcome
from retrysafe.stores import Store, open_store
from retrysafe.stores.base import StoreStats

__all__ = ["app", "describe_outcome", "record_json"]

SEARCH_LIMIT = 10_000  # records scanned to find a key when its scope or namespace is not given
INTERNAL = SECRET_IDENTITY.namespace
"""retrysafe's own records (the scope secret): hidden unless asked for by name."""

app = typer.Typer(
    name="keys",
    help="Inspect and clean the idempotency records in a store.",
    no_args_is_help=True,
    epilog=(
        "Examples:\n\n"
        "  retrysafe keys stats --store sqlite:///retrysafe.db\n\n"
        "  retrysafe keys list --store redis://localhost:6379/0 --state in_flight\n\n"
        "  retrysafe keys show 0ccb7813-2b7e --store postgresql://app@db/app\n\n"
        "  retrysafe keys delete 0ccb7813-2b7e --scope 9f2c... --store sqlite:///retrysafe.db\n\n"
        "  retrysafe keys purge --store sqlite:///retrysafe.db"
    ),
)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="RETRYSAFE_STORE",
        metavar="URL",
        help="The store: sqlite:///path.db, postgresql://..., redis://..., memory://.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Write JSON to stdout instead of a table.")
]
ScopeOption = Annotated[
    str | None, typer.Option("--scope", help="Only this scope (tenant); shown by 'keys list'.")
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", help="Only this namespace (an app or a function).")
]
KeyArgument = Annotated[
    str, typer.Argument(help="The Idempotency-Key value, as the client sent it.")
]


@contextmanager
def _opened(url: str) -> Iterator[Store]:
    with errors_as_one_line():
        store = open_store(url)
        try:
            yield store
        finally:
            store.close()


@app.command("list")
def list_(
    *,
    store_url: StoreOption,
    state: Annotated[
        State | None, typer.Option("--state", help="Only records in this state.")
    ] = None,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Only records claimed before: 90s, 15m, 2h, 1d.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show at most this many.")] = 100,
    as_json: JsonOption = False,
) -> None:
    """List live records, newest first: scope, key, state, age, expiry, lease owner, size.

    The lease owner is the start of the holder's fencing token (see 'keys show' for all of it).

    Example: retrysafe keys list --store sqlite:///retrysafe.db --state in_flight --older-than 5m
    """
    min_age = parse_duration(older_than) if older_than is not None else None
    with _opened(store_url) as store:
        now = store.clock.now()
        records = _visible_records(
            store,
            namespace=namespace,
            scope=scope,
            state=state,
            created_before=None if min_age is None else now - min_age,
            limit=limit,
        )
    if as_json:
        print_json({"records": [record_json(r, now) for r in records]})
        return
    if not records:
        console.print("No records match.")
        return
    namespaces = {r.identity.namespace for r in records}
    title = f"{len(records)} record{'s' * (len(records) != 1)}"
    if len(namespaces) == 1:
        title += f" in namespace {next(iter(namespaces))!r}"
    table = Table(title=literal(title), title_justify="left")
    columns = ["scope", "key", "state", "age", "expires in", "lease owner", "size"]
    if len(namespaces) > 1:
        columns.insert(0, "namespace")
    for column in columns:
        table.add_column(column, overflow="fold", justify="right" if column == "size" else "left")
    for record in records:
        row = [
            record.identity.scope,
            record.identity.key,
            _state_text(record, now),
            human_duration(now - record.created_at),
            human_duration(record.expires_at - now),
            record.token[:8],
            human_bytes(record.size),
        ]
        if len(namespaces) > 1:
            row.insert(0, record.identity.namespace)
        table.add_row(*map(literal, row))
    console.print(table)
    if len(records) == limit:
        console.print(f"[dim]Showing the newest {limit}; use --limit for more.[/]")


@app.command()
def show(
    key: KeyArgument,
    store_url: StoreOption,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one record with its stored response.

    Give --scope and --namespace when the same key exists in more than one scope.

    Example: retrysafe keys show 0ccb7813-2b7e --store sqlite:///retrysafe.db
    """
    with _opened(store_url) as store:
        record = _find(store, key, scope, namespace)
        now = store.clock.now()
    data = record_json(record, now)
    data["outcome"] = _outcome_json(record)
    if as_json:
        print_json(data)
        return
    rows = [
        ("namespace", record.identity.namespace),
        ("scope", record.identity.scope),
        ("key", record.identity.key),
        ("state", _state_text(record, now)),
        ("fingerprint", record.fingerprint),
        ("claimed", f"{_iso(record.created_at)} ({human_duration(now - record.created_at)} ago)"),
        ("lease owner", _lease_text(record, now)),
        ("expires", f"{_iso(record.expires_at)} (in {human_duration(record.expires_at - now)})"),
        ("recovery point", record.recovery_point),
        ("size", human_bytes(record.size)),
    ]
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        if value is not None:
            table.add_row(name, literal(value))
    console.print(table)
    if data["outcome"] is not None:
        console.print()
        console.print("[bold]stored outcome[/]")
        for line in json.dumps(data["outcome"], indent=2).splitlines():
            console.print(literal(line), soft_wrap=True)


@app.command()
def delete(
    key: KeyArgument,
    store_url: StoreOption,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete one record, whatever its state, so the next request with its key runs again.

    This is how to unstick a key whose first request died holding its lease. If that request
    is in fact still running, deleting its record lets a retry run the effect a second time.
    The scope secret (namespace retrysafe.internal) is never deleted.

    Example: retrysafe keys delete 0ccb7813-2b7e --scope 9f2c... --store sqlite:///retrysafe.db
    """
    with _opened(store_url) as store:
        record = _find(store, key, scope, namespace)
        if record.identity.namespace == INTERNAL:
            fail(
                f"Refusing to delete {record.identity.key!r} in {INTERNAL!r}: it is the scope "
                "secret, and without it every keyed request fails closed (503) while records "
                "exist, since a new secret would change every scope.",
                EXIT_USAGE,
            )
        now = store.clock.now()
        deleted = store.delete(record.identity)
    live_lease = record.state is State.IN_FLIGHT and record.lease_expires_at > now
    if as_json:
        print_json({"deleted": deleted, "record": record_json(record, now)})
        return
    message = (
        f"Deleted {record.state.value} record {record.identity.key!r} "
        f"(scope {record.identity.scope!r}, namespace {record.identity.namespace!r}); "
        "the next request with this key runs again."
    )
    console.print(literal(message))
    if live_lease:
        console.print(
            "[yellow]Its lease was still live: if that request is still running, a retry may "
            "repeat its effect.[/]"
        )


@app.command()
def purge(
    store_url: StoreOption,
    batch: Annotated[
        int, typer.Option("--batch", min=1, help="Records deleted per store call.")
    ] = 1000,
    as_json: JsonOption = False,
) -> None:
    """Delete every record past its retention, in bounded batches.

    Expired records are already invisible (expiry is enforced on read); purging frees the space.
    The scope secret is kept for a century, so a purge never deletes it.

    Example: retrysafe keys purge --store postgresql://app@db/app
    """
    total = 0
    with _opened(store_url) as store:
        while True:
            purged = store.purge_expired(limit=batch)
            total += purged
            if purged < batch:
                break
    if as_json:
        print_json({"purged": total})
    else:
        console.print(f"Purged {total} expired record{'s' * (total != 1)}.")


@app.command()
def stats(
    store_url: StoreOption,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help=f"Only {INTERNAL}: count retrysafe's own records (the scope secret), which "
            "the counts otherwise leave out.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Show counts by state, the oldest in-flight claim, and the bytes of stored outcomes.

    Example: retrysafe keys stats --store redis://localhost:6379/0
    """
    if namespace not in (None, INTERNAL):
        fail(f"stats counts the whole store; --namespace takes only {INTERNAL!r}.", EXIT_USAGE)
    with _opened(store_url) as store:
        result = _app_stats(store) if namespace is None else _stats_of(_internal_records(store))
        now = store.clock.now()
    oldest = result.oldest_in_flight_at
    data: dict[str, object] = {
        "in_flight": result.in_flight,
        "done": result.done,
        "total": result.in_flight + result.done,
        "bytes_stored": result.bytes_stored,
        "oldest_in_flight_at": None if oldest is None else _iso(oldest),
        "oldest_in_flight_age_seconds": None if oldest is None else round(now - oldest, 3),
    }
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("in flight", str(result.in_flight))
    table.add_row("done", str(result.done))
    table.add_row("total", str(result.in_flight + result.done))
    table.add_row("stored outcomes", human_bytes(result.bytes_stored))
    table.add_row(
        "oldest in flight",
        "none" if oldest is None else f"claimed {human_duration(now - oldest)} ago",
    )
    console.print(table)


def record_json(record: Record, now: float) -> dict[str, object]:
    """Return a record as JSON-ready data (times as ISO 8601 UTC, with ages in seconds)."""
    return {
        "namespace": record.identity.namespace,
        "scope": record.identity.scope,
        "key": record.identity.key,
        "state": record.state.value,
        "fingerprint": record.fingerprint,
        "lease_owner": record.token,
        "created_at": _iso(record.created_at),
        "age_seconds": round(now - record.created_at, 3),
        "lease_expires_at": _iso(record.lease_expires_at),
        "lease_live": record.state is State.IN_FLIGHT and record.lease_expires_at > now,
        "expires_at": _iso(record.expires_at),
        "size": record.size,
        "recovery_point": record.recovery_point,
    }


def _hidden(record: Record, namespace: str | None) -> bool:
    """Whether `record` is left out: retrysafe's own, and its namespace was not asked for."""
    return record.identity.namespace == INTERNAL and namespace != INTERNAL


def _visible_records(
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
        visible = [r for r in records if not _hidden(r, namespace)]
        if len(visible) >= limit or len(records) < asked:
            return visible[:limit]
        asked = limit + len(records) - len(visible)  # more than before: some were hidden


def _internal_records(store: Store) -> list[Record]:
    return store.list_records(namespace=INTERNAL, limit=SEARCH_LIMIT)


def _stats_of(records: list[Record]) -> StoreStats:
    """Return the counts of `records`, as `Store.stats` counts a whole store."""
    in_flight = [r.created_at for r in records if r.state is State.IN_FLIGHT]
    return StoreStats(
        in_flight=len(in_flight),
        done=len(records) - len(in_flight),
        bytes_stored=sum(r.size for r in records),
        oldest_in_flight_at=min(in_flight, default=None),
    )


def _app_stats(store: Store) -> StoreStats:
    """Return the store's counts without retrysafe's own records."""
    whole, internal = store.stats(), _stats_of(_internal_records(store))
    oldest = whole.oldest_in_flight_at
    if oldest is not None and oldest == internal.oldest_in_flight_at:  # find the app's oldest
        claims = store.list_records(state=State.IN_FLIGHT, limit=SEARCH_LIMIT)
        oldest = min((r.created_at for r in claims if not _hidden(r, None)), default=None)
    return StoreStats(
        in_flight=whole.in_flight - internal.in_flight,
        done=whole.done - internal.done,
        bytes_stored=whole.bytes_stored - internal.bytes_stored,
        oldest_in_flight_at=oldest,
    )


def _outcome_json(record: Record) -> dict[str, object] | None:
    """Return the stored outcome as JSON-ready data; the scope secret is never printed."""
    if record.outcome is None:
        return None
    if record.identity.namespace == INTERNAL:
        return {"kind": "secret", "bytes": len(record.outcome)}
    return describe_outcome(record.outcome)


def _find(store: Store, key: str, scope: str | None, namespace: str | None) -> Record:
    if scope is not None and namespace is not None:
        record = store.get(Identity(namespace, scope, key))
        if record is None:
            fail(f"No live record for key {key!r} in scope {scope!r}, namespace {namespace!r}.")
        return record
    matches = [
        r
        for r in store.list_records(namespace=namespace, scope=scope, limit=SEARCH_LIMIT)
        if r.identity.key == key and not _hidden(r, namespace)
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


def _state_text(record: Record, now: float) -> str:
    if record.state is State.DONE:
        return "done"
    if record.lease_expires_at > now:
        return f"in flight ({human_duration(record.lease_expires_at - now)} left)"
    return "in flight (lease expired)"


def _lease_text(record: Record, now: float) -> str:
    owner = record.token[:12]
    if record.state is State.DONE:
        return f"{owner} (completed)"
    if record.lease_expires_at > now:
        return f"{owner} (lease {human_duration(record.lease_expires_at - now)} left)"
    return f"{owner} (lease expired {human_duration(now - record.lease_expires_at)} ago)"


def _iso(timestamp: float) -> str:
    return (
        datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )
