"""Work that finishes without its client: a registry of resumable operations and a completer.

    from retrysafe.completer import Completer, Registry

    registry = Registry()

    @registry.operation("rides")
    def ride(request: bytes, connection) -> dict[str, PhaseFunction]:
        ...                                    # the phases of one ride, from its request

    registry.run(conn, identity, request)      # the application: atomic phases, request stored
    Completer(registry, connect=...).run()     # a process: finishes what clients left behind

An operation the application runs through the registry is an atomic-phases operation
(`retrysafe.transactions.run_phases`) whose request is stored next to its record, in the
claim's transaction, until it finishes. If its client vanishes mid-way, the completer finds it
once its lease has expired, takes it over with the normal claim and fencing, and re-drives it
from its last recovery point with the operation the registry names for its namespace. After
`max_attempts` failed runs it marks the operation as needing a person (`needing_attention`,
shown by `retrysafe keys` and the console) instead of trying forever. The command line is
`retrysafe complete --store URL --app MODULE:REGISTRY`. See docs/completer.md.
"""

from __future__ import annotations

from retrysafe.completer._attention import ATTENTION_NAMESPACE, Attention, needing_attention
from retrysafe.completer._completer import Completer, Pass
from retrysafe.completer._registry import Operation, Registry, request_fingerprint
from retrysafe.completer._table import ResumableRow
from retrysafe.transactions._steps import PhaseFunction, Step

__all__ = [
    "ATTENTION_NAMESPACE",
    "Attention",
    "Completer",
    "Operation",
    "Pass",
    "PhaseFunction",
    "Registry",
    "ResumableRow",
    "Step",
    "needing_attention",
    "request_fingerprint",
]
