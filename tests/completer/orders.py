"""The application the completer tests run: a registry with one phased order operation.

`orders` is reserve, charge (through the test payment provider, with the derived foreign key),
finish. Everything a run needs is in its request (JSON): the order key, the tables, the
provider's URL, and optionally a `blocker` table: while that table has a row, the finish phase
raises, as an operation whose cause a person must fix. `reach` is called at each named point;
the crash worker replaces it to stop there and be killed, the race test to abandon a run.
"""

from __future__ import annotations

import json
import secrets
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from retrysafe.completer import PhaseFunction, Registry, Step
from retrysafe.transactions import insert_if_absent, update_by_key

__all__ = ["POINTS", "calls", "registry", "request_of"]

POINTS = (
    "reserve:start",
    "reserve:end",
    "charge:start",
    "charge:after_call",
    "finish:start",
    "finish:end",
)
registry = Registry()
calls: Counter[tuple[str, str]] = Counter()
"""Phase runs in this process, by (phase, order key)."""
reach: Callable[[str, str], None] = lambda point, key: None  # noqa: E731 - replaced by tests


def request_of(key: str, **spec: str) -> bytes:
    """Return the stored request of order `key` (`orders`, `log`, `provider`, `blocker`)."""
    return json.dumps({"key": key, **spec}).encode()


@registry.operation("orders")
def order(request: bytes, connection: Any) -> Mapping[str, PhaseFunction]:
    """Build the phases of one order from its request."""
    spec = json.loads(request)
    key, orders = spec["key"], spec["orders"]
    reach("build", key)  # (not a crash point: nothing is claimed yet)
    mark = "%s" if type(connection).__module__.startswith("psycopg") else "?"

    def log(step: Step) -> None:
        # A plain insert, on purpose: a phase whose writes committed twice shows twice.
        statement = f"INSERT INTO {spec['log']} VALUES ({mark}, {mark}, {mark})"  # noqa: S608 - a test table
        connection.execute(statement, (secrets.token_hex(6), key, step.name))

    def reserve(step: Step) -> None:
        calls["reserve", key] += 1
        reach("reserve:start", key)
        insert_if_absent(connection, orders, {"key": key, "status": "reserved"}, unique=["key"])
        log(step)
        reach("reserve:end", key)

    def charge(step: Step) -> None:
        calls["charge", key] += 1
        reach("charge:start", key)
        response = httpx.post(
            f"{spec['provider']}/charges",
            json={"amount": 100},
            headers={"Idempotency-Key": step.foreign_key()},
            timeout=10,
        )
        response.raise_for_status()
        reach("charge:after_call", key)
        update_by_key(
            connection, orders, {"key": key}, {"charge": response.json()["id"], "status": "charged"}
        )
        log(step)

    def finish(step: Step) -> bytes:
        calls["finish", key] += 1
        reach("finish:start", key)
        blocker = spec.get("blocker")
        if blocker and connection.execute(f"SELECT 1 FROM {blocker}").fetchall():  # noqa: S608
            raise RuntimeError(f"order {key} is blocked")
        row = update_by_key(connection, orders, {"key": key}, {"status": "paid"})
        assert row is not None
        log(step)
        reach("finish:end", key)
        return json.dumps({"order": key, "charge": row["charge"]}).encode()

    return {"reserve": reserve, "charge": charge, "finish": finish}
