"""Atomic phases: multi-step operations that call other systems, resumable after a crash (B30).

After Brandur Leach's "Implementing Stripe-like Idempotency Keys in Postgres". An operation is
a sequence of named phases. The key is claimed in a transaction of its own and committed in
flight; then each phase runs in one transaction that also moves the record's recovery point to
the phase's name, so the phase's local writes and the recovery point commit together. A retry
(once the crashed holder's lease has expired) takes the record over and resumes after the last
committed phase; a duplicate that arrives while a live holder runs gets `InFlightError`.

A phase may call another system (a payment provider). If the process dies after that call but
before the phase commits, the phase runs again on resume and calls again: so every foreign call
carries `step.foreign_key()`, a key derived from the record and the phase's name (never the
client's raw key), and the other system deduplicates it. The same operation (same record, same
phase) always derives the same key; another operation, or the same client key once its
retention ended, derives another.

A phase returns None to continue, or the operation's outcome (bytes) to finish it: the outcome
commits with that phase's writes and is replayed to every later duplicate. The last phase's
return value is the outcome (None counts as empty).

With `encryption=` (a `Keyring`, the keys of the store that shares the table) the outcome is
sealed before it commits with its phase, and a record that a replay or a resume finds is
opened with the same keys, as every other face of transactional mode does (docs/encryption.md).
The recovery point stays in clear: it is a phase name the code chooses, not request data.

`arun_phases` is written once, in `_async/phases.py`; `run_phases` is generated from it
(`_sync/phases.py`, `scripts/unasync.py`). The plan, `Step`, `PhasesResult` and `foreign_key`
are pure and shared (`_steps.py`).
"""

from __future__ import annotations

from retrysafe.transactions._async.phases import arun_phases
from retrysafe.transactions._steps import PhasesResult, Step, foreign_key
from retrysafe.transactions._sync.phases import run_phases

__all__ = ["PhasesResult", "Step", "arun_phases", "foreign_key", "run_phases"]
