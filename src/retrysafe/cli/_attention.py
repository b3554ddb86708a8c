"""What `retrysafe keys` shows of the operations the completer gave up on (`needs attention`).

The completer's marks (`retrysafe.completer._attention`) are records of the store, read through
its API like every other, so this works on any store URL. A mark stands only while its
operation is still as the completer left it.
"""

from __future__ import annotations

from enum import StrEnum

from retrysafe._record import State
from retrysafe.completer._attention import Attention, needing_attention
from retrysafe.stores import Store

__all__ = ["StateFilter", "attention_json", "attention_of", "state_of"]


class StateFilter(StrEnum):
    """The states `keys list --state` takes: a record's, or the completer's verdict."""

    IN_FLIGHT = "in_flight"
    DONE = "done"
    NEEDS_ATTENTION = "needs_attention"


def state_of(chosen: StateFilter | None) -> State | None:
    """Return the record state a filter lists (None: any, and for `needs_attention`)."""
    if chosen is None or chosen is StateFilter.NEEDS_ATTENTION:
        return None
    return State(chosen.value)


def attention_of(store: Store) -> dict[str, Attention]:
    """Return the operations that need a person, by their identity digest."""
    return {a.record.identity.digest(): a for a in needing_attention(store)}


def attention_json(attention: Attention | None) -> dict[str, object]:
    """Return the fields `--json` adds to a record: whether it needs a person, and why."""
    if attention is None:
        return {"needs_attention": False}
    return {
        "needs_attention": True,
        "attempts": attention.attempts,
        "last_error": attention.last_error,
    }
