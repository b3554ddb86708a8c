"""Atomic phases with `encryption=`: the outcome committed with its last phase is sealed as an
encrypted store's are, on real SQLite files and PostgreSQL (B29, B30)."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import (
    ConfigurationError,
    Identity,
    RecordUnreadableError,
    State,
    open_store,
    transactions,
)
from retrysafe.stores.encrypted import Keyring
from retrysafe.transactions import PhasesResult, Step
from tests.transactions.conftest import BoomError, Database, make_database

MAGIC = b"rse\x01"
PHASES = ("reserve", "charge", "finish")
OUTCOME = b'{"order": "order-1", "card": "4242 4242 4242 4242"}'


@pytest.fixture
def keyring() -> Keyring:
    """Keys of this test's own."""
    return Keyring([Keyring.generate_key()])


def identity() -> Identity:
    """A fresh identity, so no test meets another's record."""
    return Identity("orders", "tenant-a", f"order-{secrets.token_hex(4)}")


class Order:
    """Three phases (reserve, charge, finish), each logging one row in its own transaction;
    `fail_in` makes a phase raise once, as a crash between phases leaves the operation."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.log = database.create_table("rs_log", "id TEXT PRIMARY KEY, phase TEXT")
        self.fail_in: str | None = None

    def phases(self, connection: Any) -> dict[str, Any]:
        """Return the phases, writing on `connection`."""

        def phase(name: str, outcome: bytes | None) -> Any:
            def run(step: Step) -> bytes | None:
                connection.execute(self.insert, (secrets.token_hex(6), step.name))
                return self.reached(name, outcome)

            return run

        return {name: phase(name, OUTCOME if name == "finish" else None) for name in PHASES}

    def aphases(self, connection: Any) -> dict[str, Any]:
        """Return the phases as coroutine functions, writing on the async `connection`."""

        def phase(name: str, outcome: bytes | None) -> Any:
            async def run(step: Step) -> bytes | None:
                await connection.execute(self.insert, (secrets.token_hex(6), step.name))
                return self.reached(name, outcome)

            return run

        return {name: phase(name, OUTCOME if name == "finish" else None) for name in PHASES}

    @property
    def insert(self) -> str:
        """The statement a phase logs itself with."""
        return f"INSERT INTO {self.log} VALUES ({self.database.mark}, {self.database.mark})"  # noqa: S608 - a unique_name() table

    def reached(self, name: str, outcome: bytes | None) -> bytes | None:
        """Raise in the phase that is to fail (once); else return its outcome."""
        if self.fail_in == name:
            self.fail_in = None
            raise BoomError(name)
        return outcome

    def run(self, ident: Identity, **options: Any) -> PhasesResult:
        """Run the phases once on a new connection of the database."""
        conn = self.database.connect()
        try:
            return transactions.run_phases(
                conn,
                self.phases(conn),
                identity=ident,
                fingerprint="fp",
                table=self.database.table,
                **options,
            )
        finally:
            conn.close()

    def logged(self) -> list[str]:
        """Return the phases whose writes committed, sorted."""
        return sorted(r[0] for r in self.database.execute(f"SELECT phase FROM {self.log}"))  # noqa: S608


def stored_outcome(database: Database, ident: Identity) -> bytes:
    """Return the outcome exactly as the records table holds it (a store without keys)."""
    store = database.store()
    try:
        record = store.get(ident)
    finally:
        store.close()
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome is not None
    return record.outcome


def opened_outcome(database: Database, ident: Identity, keyring: Keyring) -> bytes | None:
    """Return the outcome as an encrypted store on the same table reads it."""
    store = open_store(database.url, encryption=keyring)
    try:
        record = store.get(ident)
    finally:
        store.close()
    return None if record is None else record.outcome


def test_b30_phases_with_encryption_store_a_sealed_outcome_an_encrypted_store_opens(
    database: Database, keyring: Keyring
) -> None:
    """`run_phases(..., encryption=)` commits the outcome sealed: an encrypted store on the same
    table opens it, one with other keys cannot (`RecordUnreadableError`), and a replay with the
    keys returns it in clear without running a phase."""
    order, ident = Order(database), identity()
    first = order.run(ident, encryption=keyring)
    assert (first.outcome, first.replay, first.ran) == (OUTCOME, False, PHASES)

    raw = stored_outcome(database, ident)
    assert raw.startswith(MAGIC)
    assert b"4242" not in raw
    assert opened_outcome(database, ident, keyring) == OUTCOME
    with pytest.raises(RecordUnreadableError, match="does not hold"):
        opened_outcome(database, ident, Keyring([Keyring.generate_key()]))

    again = order.run(ident, encryption=keyring)
    assert (again.outcome, again.replay, again.ran) == (OUTCOME, True, ())
    assert order.logged() == sorted(PHASES)


def test_b30_a_sealed_operation_resumes_from_its_recovery_point(
    database: Database, keyring: Keyring
) -> None:
    """An operation with `encryption=` that failed after its first phase resumes after it on
    the retry, and the outcome the retry commits is sealed."""
    order, ident = Order(database), identity()
    order.fail_in = "charge"
    with pytest.raises(BoomError):
        order.run(ident, encryption=keyring)
    resumed = order.run(ident, encryption=keyring)
    assert (resumed.resumed_from, resumed.ran) == ("reserve", ("charge", "finish"))
    assert resumed.outcome == OUTCOME
    assert stored_outcome(database, ident).startswith(MAGIC)
    assert opened_outcome(database, ident, keyring) == OUTCOME
    assert order.logged() == sorted(PHASES)  # the failed charge rolled back with its phase


def test_b30_a_replay_with_other_keys_is_refused(database: Database, keyring: Keyring) -> None:
    """A retry given other keys than the ones that sealed the outcome raises
    `RecordUnreadableError` instead of replaying ciphertext, and runs no phase."""
    order, ident = Order(database), identity()
    order.run(ident, encryption=keyring)
    with pytest.raises(RecordUnreadableError):
        order.run(ident, encryption=Keyring([Keyring.generate_key()]))
    assert order.logged() == sorted(PHASES)


def test_b30_phases_refuse_encryption_that_is_not_a_keyring(database: Database) -> None:
    """`encryption=` given something other than a `Keyring` is a `ConfigurationError`, before
    any record is written: never an outcome stored in clear."""
    order, ident = Order(database), identity()
    with pytest.raises(ConfigurationError, match="Keyring"):
        order.run(ident, encryption=Keyring.generate_key())
    assert order.logged() == []


def test_b29_every_transactional_face_refuses_encryption_that_is_not_a_keyring(
    tmp_path: Path,
) -> None:
    """`transactions.sqlite` refuses what is not a `Keyring` with the same
    `ConfigurationError` as phases (before: an `AttributeError` at the claim)."""
    connection = sqlite3.connect(tmp_path / "app.db")
    with contextlib.closing(connection), pytest.raises(ConfigurationError, match="Keyring"):
        transactions.sqlite(connection, identity=identity(), fingerprint="f", encryption="k")


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A real PostgreSQL server with tables of this test's own (psycopg's async connection)."""
    with make_database("postgres", request, tmp_path) as made:
        yield made


def test_b30_arun_phases_with_encryption_seals_and_resumes(
    postgres: Database, keyring: Keyring
) -> None:
    """`arun_phases(..., encryption=)` on psycopg's async connection resumes a failed operation
    from its recovery point and commits its outcome sealed, as `run_phases` does."""
    order, ident = Order(postgres), identity()

    async def run() -> PhasesResult:
        conn = await postgres.aconnect()
        try:
            return await transactions.arun_phases(
                conn,
                order.aphases(conn),
                identity=ident,
                fingerprint="fp",
                table=postgres.table,
                encryption=keyring,
            )
        finally:
            await conn.close()

    order.fail_in = "charge"
    with pytest.raises(BoomError):
        asyncio.run(run())
    resumed = asyncio.run(run())
    assert (resumed.resumed_from, resumed.ran) == ("reserve", ("charge", "finish"))
    assert resumed.outcome == OUTCOME
    assert stored_outcome(postgres, ident).startswith(MAGIC)
    assert opened_outcome(postgres, ident, keyring) == OUTCOME
    replay = asyncio.run(run())
    assert (replay.replay, replay.outcome) == (True, OUTCOME)
