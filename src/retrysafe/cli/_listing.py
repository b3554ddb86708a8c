"""The table `keys list` prints: a heading that says how many records match in all, and one
line per record that fits the terminal.

Hashed scopes are shortened (`c:923b541a…`, `_scopes.py`). When the row is still wider than
the terminal, the least needed columns are left out, in this order: lease owner, size,
expiry, age. If that is not enough, the state leaves out the time left on a lease (`in
flight`, `lease expired`) and the columns that then fit come back. `keys show` and `--json`
have every field. A key too long for what is left wraps
rather than being cut, so it can still be copied whole.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from retrysafe._record import Record, State
from retrysafe.cli._common import human_bytes, human_duration, literal
from retrysafe.cli._records import COUNT_LIMIT, state_text
from retrysafe.cli._scopes import short_scope

__all__ = ["COLUMNS", "OPTIONAL", "heading", "records_table"]

COLUMNS: Final[tuple[str, ...]] = (
    "namespace",
    "scope",
    "key",
    "state",
    "age",
    "expires in",
    "lease owner",
    "size",
)
OPTIONAL: Final[tuple[str, ...]] = ("lease owner", "size", "expires in", "age")
"""Columns left out, in this order, until a row fits the terminal."""
_NATURAL: Final = 100_000  # a width no table reaches: measures a table's unwrapped width


def heading(shown: list[Record], total: int | None) -> str:
    """Return the table's title: how many records match (`total`, None for more than
    COUNT_LIMIT), how many are shown, and their namespace when they share one."""
    namespaces = {r.identity.namespace for r in shown}
    where = f"in namespace {next(iter(namespaces))!r}" if len(namespaces) == 1 else ""
    if total is not None and total <= len(shown):
        plural = "s" * (len(shown) != 1)
        return f"{len(shown)} record{plural}" + (f" {where}" if where else "")
    counted = f"{total:,}" if total is not None else f"More than {COUNT_LIMIT:,}"
    newest = f"the newest {len(shown)}" + (f", all {where}" if where else "")
    return f"{counted} records match; {newest}, are shown (--limit for more)"


def records_table(
    records: list[Record], now: float, *, console: Console, attention: Collection[str] = ()
) -> Table:
    """Return the table of `records`, with as many columns as fit `console`'s width; those
    whose identity digest is in `attention` are shown as needing attention."""
    columns = [c for c in COLUMNS if c != "namespace" or _mixed(records)]
    table = _table(records, now, columns, short_state=False, attention=attention)
    for column in OPTIONAL:
        if _fits(table, console):
            return table
        columns.remove(column)
        table = _table(records, now, columns, short_state=False, attention=attention)
    if _fits(table, console):
        return table
    # The state without its lease's time left; then what that made room for comes back.
    table = _table(records, now, columns, short_state=True, attention=attention)
    for column in reversed(OPTIONAL):
        wider = [c for c in COLUMNS if c in columns or c == column]
        candidate = _table(records, now, wider, short_state=True, attention=attention)
        if not _fits(candidate, console):
            break
        columns, table = wider, candidate
    return table


def _fits(table: Table, console: Console) -> bool:
    options = console.options.update_width(_NATURAL)
    return Measurement.get(console, options, table).maximum <= console.width


def _mixed(records: list[Record]) -> bool:
    return len({r.identity.namespace for r in records}) > 1


def _table(
    records: list[Record],
    now: float,
    columns: list[str],
    *,
    short_state: bool,
    attention: Collection[str],
) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
        show_edge=False,
    )
    for column in columns:
        table.add_column(
            column,
            justify="right" if column == "size" else "left",
            # Only a key (or a namespace) that cannot fit wraps; every other cell is short.
            overflow="fold",
            no_wrap=column not in ("key", "namespace"),
        )
    for record in records:
        cells = _cells(record, now, short_state=short_state)
        if record.identity.digest() in attention:
            cells["state"] = "needs attention"
        table.add_row(*(literal(cells[column]) for column in columns))
    return table


def _cells(record: Record, now: float, *, short_state: bool) -> dict[str, str]:
    return {
        "namespace": record.identity.namespace,
        "scope": short_scope(record.identity.scope),
        "key": record.identity.key,
        "state": _short_state(record, now) if short_state else state_text(record, now),
        "age": human_duration(now - record.created_at),
        "expires in": human_duration(record.expires_at - now),
        "lease owner": record.token[:8],
        "size": human_bytes(record.size),
    }


def _short_state(record: Record, now: float) -> str:
    if record.state is State.DONE:
        return "done"
    return "in flight" if record.lease_expires_at > now else "lease expired"
