"""`retrysafe keys`: inspect and clean a store (list, show, delete, purge, stats).

The namespace `retrysafe.internal` holds the scope secret the HTTP middleware keeps in the store
when no `scope_secret` is configured (B8). It is not the app's data: `list`, `show` and `stats`
leave it out unless `--namespace retrysafe.internal` is given, and `delete` refuses to remove
it, since without it every keyed request fails closed. `purge` never reaches it: its retention
is a century.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from retrysafe._record import State
from retrysafe.cli._attention import StateFilter, attention_json, attention_of, state_of
from retrysafe.cli._common import (
    EXIT_USAGE,
    console,
    fail,
    human_bytes,
    human_duration,
    json_text,
    literal,
    parse_duration,
    print_json,
    unescape,
)
from retrysafe.cli._listing import heading, records_table
from retrysafe.cli._records import (
    INTERNAL,
    app_stats,
    count_matching,
    delete_as_read,
    find,
    internal_records,
    iso,
    lease_text,
    outcome_json,
    read_record,
    record_json,
    resolve_scope,
    state_text,
    visible_records,
)
from retrysafe.cli._render import describe_outcome
from retrysafe.cli._stores import existing_store
from retrysafe.completer._attention import Attention
from retrysafe.stores.base import stats_of

__all__ = ["app", "describe_outcome", "record_json"]

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
        "  retrysafe keys purge --store mysql://app@db/app"
    ),
)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="RETRYSAFE_STORE",
        metavar="URL",
        help=(
            "The store: sqlite:///path.db, postgresql://..., mysql://user@host/db,"
            " redis://..., redis+cluster://host:port,..., memory://."
        ),
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Write JSON to stdout instead of a table.")
]
ScopeOption = Annotated[
    str | None,
    typer.Option(
        "--scope",
        help="Only this scope (tenant), as 'keys list' shows it: the whole scope, or a "
        "unique start of a hashed one (c:923b541a..., 923b541a).",
    ),
]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", help="Only this namespace (an app or a function).")
]
KeyArgument = Annotated[
    str, typer.Argument(help="The Idempotency-Key value, as the client sent it.")
]
EscapedOption = Annotated[
    bool,
    typer.Option(
        "--escaped",
        # The help is Markdown: eight backslashes here are four in the text, two on screen.
        help="KEY, --scope and --namespace are written with backslash escapes, as --json "
        "writes them (\\n, \\u0000, \\ud800; \\\\\\\\ for a backslash): for a key a terminal "
        "cannot carry.",
    ),
]


@app.command("list")
def list_(
    *,
    store_url: StoreOption,
    state: Annotated[
        StateFilter | None,
        typer.Option(
            "--state",
            help="Only records in this state; needs_attention: those the completer gave up on.",
        ),
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

    The heading says how many records match in all. A hashed scope is shown by its start
    (c:923b541a...), which --scope accepts. The lease owner is the start of the holder's
    fencing token (see 'keys show' for all of it). On a narrow terminal the lease owner, size,
    expiry and age columns are left out, in that order, then the time left on a lease, so
    that each row fits on one line.

    Example: retrysafe keys list --store sqlite:///retrysafe.db --state in_flight --older-than 5m
    """
    min_age = parse_duration(older_than) if older_than is not None else None
    with existing_store(store_url) as store:
        now = store.clock.now()
        if scope is not None:
            scope = resolve_scope(store, scope, namespace)
        before = None if min_age is None else now - min_age
        attention = attention_of(store)
        if state is StateFilter.NEEDS_ATTENTION:
            records = [
                a.record
                for a in attention.values()
                if namespace in (None, a.record.identity.namespace)
                and scope in (None, a.record.identity.scope)
                and (before is None or a.record.created_at < before)
            ]
            total: int | None = len(records)
            records = records[:limit]
        else:
            records = visible_records(
                store,
                namespace=namespace,
                scope=scope,
                state=state_of(state),
                created_before=before,
                limit=limit,
            )
            total = len(records)
            if len(records) == limit and not as_json:  # how many more, for the heading
                total = count_matching(
                    store,
                    namespace=namespace,
                    scope=scope,
                    state=state_of(state),
                    created_before=before,
                )
    if as_json:
        listed = [
            record_json(r, now) | attention_json(attention.get(r.identity.digest()))
            for r in records
        ]
        print_json({"records": listed})
        return
    if not records:
        console.print("No records match.")
        return
    if total is not None:
        total = max(total, len(records))  # records may have come between the two reads
    console.print(literal(heading(records, total)), soft_wrap=True)
    console.print(records_table(records, now, console=console, attention=attention))


@app.command()
def show(
    key: KeyArgument,
    *,
    store_url: StoreOption,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
    escaped: EscapedOption = False,
) -> None:
    """Show one record with its stored response.

    Give --scope and --namespace when the same key exists in more than one scope.

    Example: retrysafe keys show 0ccb7813-2b7e --store sqlite:///retrysafe.db
    """
    with existing_store(store_url) as store:
        record = find(store, *_named(key, scope, namespace, escaped=escaped))
        now = store.clock.now()
        attention = attention_of(store).get(record.identity.digest())
    data = record_json(record, now) | attention_json(attention)
    data["outcome"] = outcome_json(record)
    if as_json:
        print_json(data)
        return
    rows = [
        ("namespace", record.identity.namespace),
        ("scope", record.identity.scope),
        ("key", record.identity.key),
        ("state", state_text(record, now) if attention is None else _needs(attention)),
        ("fingerprint", record.fingerprint),
        ("claimed", f"{iso(record.created_at)} ({human_duration(now - record.created_at)} ago)"),
        ("lease owner", lease_text(record, now)),
        ("expires", f"{iso(record.expires_at)} (in {human_duration(record.expires_at - now)})"),
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
        for line in json_text(data["outcome"], indent=2).splitlines():
            console.print(literal(line), soft_wrap=True)


@app.command()
def delete(
    key: KeyArgument,
    *,
    store_url: StoreOption,
    scope: ScopeOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
    escaped: EscapedOption = False,
) -> None:
    """Delete one record, whatever its state, so the next request with its key runs again.

    This is how to unstick a key whose first request died holding its lease. If that request
    is in fact still running, deleting its record lets a retry run the effect a second time.
    A claim is deleted only as it was read: if a retry took it over meanwhile, nothing is
    deleted (exit 1). The scope secret (namespace retrysafe.internal) is never deleted.

    Example: retrysafe keys delete 0ccb7813-2b7e --scope 9f2c... --store sqlite:///retrysafe.db
    """
    with existing_store(store_url) as store:
        record = find(store, *_named(key, scope, namespace, escaped=escaped))
        if record.identity.namespace == INTERNAL:
            fail(
                f"Refusing to delete {record.identity.key!r} in {INTERNAL!r}: it is the scope "
                "secret, and without it every keyed request fails closed (503) while records "
                "exist, since a new secret would change every scope.",
                EXIT_USAGE,
            )
        now = store.clock.now()
        deleted = delete_as_read(store, record)
        if not deleted and read_record(store, record.identity) is not None:
            fail(
                f"Nothing deleted: the record of {record.identity.key!r} changed since it was "
                "read (a retry took its claim over, or its request finished). Run the command "
                "again to see it as it is now."
            )
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
    with existing_store(store_url) as store:
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
    with existing_store(store_url) as store:
        result = app_stats(store) if namespace is None else stats_of(internal_records(store))
        now = store.clock.now()
        attention = len(attention_of(store)) if namespace is None else 0
    oldest = result.oldest_in_flight_at
    data: dict[str, object] = {
        "in_flight": result.in_flight,
        "done": result.done,
        "total": result.in_flight + result.done,
        "needs_attention": attention,
        "bytes_stored": result.bytes_stored,
        "oldest_in_flight_at": None if oldest is None else iso(oldest),
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
    table.add_row("needs attention", str(attention))
    table.add_row("stored outcomes", human_bytes(result.bytes_stored))
    table.add_row(
        "oldest in flight",
        "none" if oldest is None else f"claimed {human_duration(now - oldest)} ago",
    )
    console.print(table)


def _named(
    key: str, scope: str | None, namespace: str | None, *, escaped: bool
) -> tuple[str, str | None, str | None]:
    """Return the key, scope and namespace as given, or with `--escaped` their escapes read."""
    if not escaped:
        return key, scope, namespace
    return (
        unescape(key, "KEY"),
        None if scope is None else unescape(scope, "--scope"),
        None if namespace is None else unescape(namespace, "--namespace"),
    )


def _needs(attention: Attention) -> str:
    """Return the state of an operation the completer gave up on, with its last error."""
    return (
        f"needs attention ({attention.attempts} attempts by the completer; last error: "
        f"{attention.last_error}); fix the cause, then run 'retrysafe complete --retry KEY'"
    )
