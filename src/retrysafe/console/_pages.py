"""The console's HTML: each page rendered on the server from the data the JSON API returns.

No script and no external asset: one inline style sheet, so the pages work offline and under
a Content-Security-Policy that allows nothing else. Every stored value (keys, scopes, bodies)
is chosen by HTTP clients: it is HTML-escaped, with control and invisible characters written
as escapes as `keys` prints them (SPEC B35). Links and forms name a record by its `ref`
(`_refs`), never by its text, which a browser may rewrite.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, cast
from urllib.parse import urlencode

from retrysafe.cli._common import human_bytes, human_duration, literal
from retrysafe.cli._scopes import short_scope
from retrysafe.console._auth import CSRF_FIELD
from retrysafe.console._data import FILTERS, PREVIEW_CHARS
from retrysafe.console._refs import ref

__all__ = [
    "confirm_delete_page",
    "confirm_purge_page",
    "deleted_page",
    "error_page",
    "overview_page",
    "purged_page",
    "record_page",
    "records_page",
]

Data = Mapping[str, object]
_STYLE: Final = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}header small{color:#aab}
main{padding:16px 24px;max-width:1200px}h1{font-size:20px;margin:8px 0 12px}
h2{font-size:16px;margin:24px 0 8px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e3e5ea;vertical-align:top}
th{background:#eceef2;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font:12px/1.4 ui-monospace,monospace}pre{background:#fff;border:1px solid #e3e5ea;
padding:10px;white-space:pre-wrap;word-break:break-all;max-height:420px;overflow:auto}
.stuck{color:#a3200f;font-weight:600}.live{color:#8a5a00}.done{color:#1f7a3a}
.note{background:#fff8e1;border:1px solid #f0d98a;padding:8px 12px}
.warn{background:#fdecea;border:1px solid #f3b4ad;padding:8px 12px}
.ok{background:#e8f5ec;border:1px solid #a9d8b8;padding:8px 12px}
button{font:inherit;padding:6px 14px;border-radius:4px;border:1px solid #a3200f;
background:#c62b16;color:#fff;cursor:pointer}a.button{padding:6px 14px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;
padding:12px;border:1px solid #e3e5ea}dt{font-weight:600}dd{margin:0;word-break:break-all}
nav.filters a{margin-right:12px}nav.filters a.on{font-weight:700;text-decoration:none}
"""


def _e(value: object) -> str:
    """Return a stored value as safe HTML text, invisible characters written as escapes."""
    return html.escape(literal(value).plain)


def _link(path: str, **params: object) -> str:
    query = urlencode({name: str(value) for name, value in params.items()})
    return html.escape(f"{path}?{query}" if query else path)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} · retrysafe console</title><style>{_STYLE}</style></head><body>"
        '<header><a href="/">retrysafe console</a><small>idempotency records</small></header>'
        f"<main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )


def _table(headings: Sequence[str], rows: Iterable[Sequence[str]], numeric: int = 0) -> str:
    """Return a table; the last `numeric` columns are right-aligned. Cells are HTML already."""
    first = len(headings) - numeric
    head = "".join(f"<th>{_e(h)}</th>" for h in headings)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=n' if i >= first else ''}>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _state(record: Data) -> str:
    """Return a record's state in words, as HTML: done, in flight, or stuck for how long."""
    if record["state"] == "done":
        if record.get("outcome_unreadable"):
            return '<span class="stuck">done, outcome unreadable</span>'
        return '<span class="done">done</span>'
    if record.get("needs_attention"):
        return '<span class="stuck">needs attention</span>'
    if record["stuck"]:
        ago = human_duration(cast(float, record["lease_expired_seconds"]))
        return f'<span class="stuck">stuck: lease expired {ago} ago</span>'
    return '<span class="live">in flight</span>'


def _identity(record: Data) -> dict[str, object]:
    return {"ref": record["ref"]}


def _namespace(name: str) -> dict[str, object]:
    """Return the parameter that names a namespace in a link: the name, or its ref when a URL
    cannot carry it (a lone surrogate)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return {"ref": ref(name)}
    return {"namespace": name}


def _records_table(records: Sequence[Data], *, with_namespace: bool) -> str:
    headings = [*("namespace",) * with_namespace, "key", "scope", "state", "age", "size"]
    rows = []
    for record in records:
        key = f'<a href="{_link("/record", **_identity(record))}">{_e(record["key"])}</a>'
        rows.append(
            [
                *(_e(record["namespace"]),) * with_namespace,
                key,
                _scope(str(record["scope"])),
                _state(record),
                human_duration(cast(float, record["age_seconds"])),
                human_bytes(cast(int, record["size"])),
            ]
        )
    return _table(headings, rows, numeric=2) if rows else "<p>No records.</p>"


def _scope(scope: str) -> str:
    return f'<code title="{_e(scope)}">{_e(short_scope(scope))}</code>'


def overview_page(data: Data) -> str:
    """Return the overview: totals, namespaces by state, stuck records, replays and mismatches."""
    totals = cast(Data, data["totals"])
    oldest = totals["oldest_in_flight_at"]
    body = _table(
        ["in flight", "done", "total", "stored outcomes", "oldest in flight claimed"],
        [
            [
                str(totals["in_flight"]),
                str(totals["done"]),
                str(totals["total"]),
                human_bytes(cast(int, totals["bytes_stored"])),
                "none" if oldest is None else _e(oldest),
            ]
        ],
    )
    body += "<h2>Namespaces</h2>" + _namespaces(cast(Sequence[Data], data["namespaces"]))
    if not data["scan_complete"]:
        body += f'<p class="note">Counted over the newest {data["scanned"]:,} records.</p>'
    stuck = cast(Sequence[Data], data["stuck"])
    body += f"<h2>Stuck: in flight, lease expired ({data['stuck_total']})</h2>"
    body += (
        "<p>Their requests stopped (or run past their lease) without an outcome. The next "
        "request with the key takes the lease over and runs again; delete one to clear it "
        "now.</p>" + _records_table(stuck, with_namespace=True)
        if stuck
        else "<p>No stuck records.</p>"
    )
    body += _needs_attention(data)
    body += "<h2>Recent replays and mismatches</h2>" + _events(cast(Data, data["events"]))
    body += (
        f'<h2>Maintenance</h2><p><a class="button" href="/purge">Purge expired records…</a></p>'
        f'<p><small>Data as JSON: <a href="/api/summary">/api/summary</a>. '
        f"Generated {_e(data['generated_at'])}.</small></p>"
    )
    return _page("Overview", body)


def _needs_attention(data: Data) -> str:
    """Return the operations the completer gave up on, with their attempts and last error."""
    records = cast(Sequence[Data], data["needs_attention"])
    body = f"<h2>Needs attention ({data['needs_attention_total']})</h2>"
    if not records:
        return body + "<p>No operation is waiting for a person.</p>"
    rows = [
        [
            _e(r["namespace"]),
            f'<a href="{_link("/record", **_identity(r))}">{_e(r["key"])}</a>',
            _scope(str(r["scope"])),
            str(r["attempts"]),
            f"<code>{_e(r['last_error'])}</code>",
        ]
        for r in records
    ]
    return (
        body + "<p>The completer gave up on these operations after their attempts. Fix the "
        "cause, then run <code>retrysafe complete --retry KEY</code>: it resumes after the "
        "last committed phase, with the same foreign keys.</p>"
        + _table(["namespace", "key", "scope", "attempts", "last error"], rows)
    )


_DECISIONS: Final = {
    "replay": "replay",
    "mismatch": '<span class="stuck">mismatch</span>',
    "in_flight": '<span class="live">conflict: in flight</span>',
}


def _events(events: Data) -> str:
    """Return the recorded events, newest first, or the note that says why there are none."""
    recent = cast(Sequence[Data], events["recent"])
    if not recent:
        return f'<p class="note">{_e(events["detail"])}</p>'
    rows = [
        [
            f'<span title="{_e(event["at"])}">{human_duration(cast(float, event["age_seconds"]))}'
            " ago</span>",
            _DECISIONS.get(str(event["decision"]), _e(event["decision"])),
            _e(event["face"]),
            _e(event["namespace"]),
            f"<code>{_e(event['key'])}</code>",
            f"<code>{_e(event['scope_digest'])}</code>",
        ]
        for event in recent
    ]
    table = _table(["when", "decision", "face", "namespace", "key", "scope digest"], rows)
    return f"<p>{_e(events['detail'])}</p>{table}"


def _namespaces(rows: Sequence[Data]) -> str:
    if not rows:
        return "<p>The store holds no records.</p>"
    cells = []
    for row in rows:
        name = str(row["namespace"])
        link = _link("/records", **_namespace(name))
        stuck = cast(int, row["stuck"])
        stuck_link = _link("/records", **_namespace(name), state="stuck")
        stuck_cell = f'<a class="stuck" href="{stuck_link}">{stuck}</a>' if stuck else "0"
        cells.append(
            [
                f'<a href="{link}">{_e(name)}</a>',
                str(row["in_flight"]),
                stuck_cell,
                str(row["done"]),
                human_bytes(cast(int, row["bytes_stored"])),
            ]
        )
    return _table(["namespace", "in flight", "stuck", "done", "stored"], cells, numeric=4)


def records_page(data: Data) -> str:
    """Return a namespace's records, filtered by state."""
    namespace, chosen = str(data["namespace"]), data["filter"]
    filters = "".join(
        f'<a class="{"on" if name == chosen else ""}" '
        f'href="{_link("/records", **_namespace(namespace), state=name)}">'
        f"{name.replace('_', ' ')}</a>"
        for name in FILTERS
    )
    records = cast(Sequence[Data], data["records"])
    body = f'<nav class="filters">{filters}</nav><h2>{len(records)} records, newest first</h2>'
    body += _records_table(records, with_namespace=False)
    return _page(f"Namespace {namespace}", body)


def _fields(record: Data) -> str:
    rows = [
        ("namespace", _e(record["namespace"])),
        ("scope", f"<code>{_e(record['scope'])}</code>"),
        ("key", f"<code>{_e(record['key'])}</code>"),
        ("state", _state(record)),
        ("fingerprint", f"<code>{_e(record['fingerprint'])}</code>"),
        ("fencing token", f"<code>{_e(record['lease_owner'])}</code>"),
        ("claimed", _e(record["created_at"])),
        ("lease until", _e(record["lease_expires_at"])),
        ("expires", _e(record["expires_at"])),
        ("size", human_bytes(cast(int, record["size"]))),
    ]
    if record["recovery_point"] is not None:
        rows.append(("recovery point", _e(record["recovery_point"])))
    return "<dl>" + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows) + "</dl>"


def record_page(record: Data) -> str:
    """Return one record in full, its outcome decoded, and the way to delete it."""
    body = _fields(record) + "<h2>Stored outcome</h2>" + _outcome(record.get("outcome"))
    body += (
        f'<h2>Delete</h2><p><a class="button" href="{_link("/record/delete", **_identity(record))}"'
        ">Delete this record…</a></p>"
    )
    return _page(f"Record {literal(record['key']).plain}", body)


def _outcome(outcome: object) -> str:
    if outcome is None:
        return "<p>None yet: the record is in flight.</p>"
    data = cast(Data, outcome)
    cut = cast(Sequence[str], data.get("truncated", ()))
    parts = []
    if data.get("kind") == "http":
        parts.append(f"<p>HTTP status <b>{_e(data['status'])}</b></p>")
        headers = cast(Sequence[Sequence[str]], data["headers"])
        parts.append(_table(["header", "value"], [[_e(n), _e(v)] for n, v in headers]))
    else:
        parts.append(f"<p>Kind <b>{_e(data.get('kind'))}</b> {_e(data.get('type', ''))}</p>")
    for name in ("body", "body_base64", "text", "base64", "repr", "message", "exceptions", "error"):
        if name in data:
            note = f" (first {PREVIEW_CHARS:,} characters)" if name in cut else ""
            parts.append(f"<h3>{name.replace('_', ' ')}{note}</h3><pre>{_e(data[name])}</pre>")
    if data.get("body_omitted"):
        parts.append("<p class=note>The body was not stored (too large to keep).</p>")
    return "".join(parts)


def _hidden(fields: Mapping[str, object]) -> str:
    return "".join(
        f'<input type="hidden" name="{name}" value="{html.escape(str(value))}">'
        for name, value in fields.items()
    )


def _confirm(action: str, fields: Mapping[str, object], csrf: str, button: str) -> str:
    return (
        f'<form method="post" action="{action}">{_hidden(fields)}'
        f"{_hidden({CSRF_FIELD: csrf, 'confirm': 'yes'})}"
        f'<button type="submit">{button}</button> <a href="/">Cancel</a></form>'
    )


def confirm_delete_page(record: Data, csrf: str, *, changed: bool = False) -> str:
    """Return the confirmation step before deleting one record (`changed`: again, because
    the record changed since the last one was shown). The form carries the record's version:
    the delete is refused if it is not the record shown here."""
    warning = (
        '<p class="warn">Nothing was deleted: this record changed since its confirmation was '
        "shown (a retry took its claim over, or its request finished). Here it is as it is "
        "now.</p>"
        if changed
        else ""
    )
    if record["lease_live"]:
        warning += (
            '<p class="warn">Its lease is still live: if its request is still running, '
            "deleting the record lets a retry repeat its effect.</p>"
        )
    fields = {**_identity(record), "version": record["version"]}
    body = (
        "<p>The next request with this key will run again.</p>"
        + warning
        + _fields(record)
        + "<p></p>"
        + _confirm("/record/delete", fields, csrf, "Delete this record")
    )
    return _page("Delete this record?", body)


def deleted_page(result: Data) -> str:
    """Return what a delete did."""
    record = cast(Data, result["record"])
    said = "Deleted" if result["deleted"] else "Already gone:"
    body = f'<p class="ok">{said} record {_e(record["key"])} (namespace {_e(record["namespace"])}).'
    body += " The next request with this key runs again.</p>"
    if result["lease_was_live"]:
        body += '<p class="warn">Its lease was still live: a retry may repeat its effect.</p>'
    link = _link("/records", **_namespace(str(record["namespace"])))
    return _page("Deleted", body + f'<p><a href="{link}">Back to the namespace</a></p>')


def confirm_purge_page(csrf: str) -> str:
    """Return the confirmation step before purging expired records."""
    body = (
        "<p>Purging deletes every record past its retention, in batches. Expired records are "
        "already invisible to every reader; purging frees their space.</p>"
        + _confirm("/purge", {}, csrf, "Purge expired records")
    )
    return _page("Purge expired records?", body)


def purged_page(result: Data) -> str:
    """Return what a purge did."""
    count = cast(int, result["purged"])
    body = f'<p class="ok">Purged {count} expired record{"s" * (count != 1)}.</p>'
    return _page("Purged", body + '<p><a href="/">Back to the overview</a></p>')


def error_page(status: int, detail: str) -> str:
    """Return a page for a refused request (the API answers problem+json instead)."""
    return _page(
        f"Error {status}", f'<p class="warn">{_e(detail)}</p><p><a href="/">Overview</a></p>'
    )
