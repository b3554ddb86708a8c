"""Atomic phases: each phase commits with its recovery point; a retry resumes after it (B30)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from retrysafe import (
    ConfigurationError,
    FencedError,
    Identity,
    InFlightError,
    KeyMismatchError,
    ManualClock,
    Record,
    State,
    transactions,
)
from retrysafe.transactions import PhasesResult, Step, foreign_key
from tests.transactions.conftest import BoomError, Database, Face

IDENTITY = Identity("orders", "tenant-a", "order-1")
PHASES = ("reserve", "charge", "finish")


class Order:
    """A phased order on one driver face; every phase logs one row in its transaction."""

    def __init__(self, face: Face) -> None:
        self.face = face
        self.database = face.database
        self.log = face.database.create_table("rs_log", "id TEXT PRIMARY KEY, phase TEXT")
        self.foreign_keys: list[str] = []

    def logged(self) -> list[str]:
        """Return the committed log, phase names sorted."""
        rows = self.database.execute(f"SELECT phase FROM {self.log}")  # noqa: S608 - a unique_name() table
        return sorted(row[0] for row in rows)

    def run(
        self,
        *,
        fail_in: str | None = None,
        finish_early_in: str | None = None,
        fingerprint: str = "fp",
    ) -> PhasesResult:
        """Run the three phases; raise BoomError in `fail_in`; finish in `finish_early_in`."""

        def body(connection: Any, step: Step) -> tuple[dict[str, object], bytes | None]:
            self.foreign_keys.append(step.foreign_key())
            row: dict[str, object] = {"id": secrets.token_hex(6), "phase": step.name}
            if step.name == fail_in:
                raise BoomError
            if step.name == finish_early_in:
                return row, b"declined"
            return row, (b"order done" if step.name == "finish" else None)

        options: dict[str, Any] = {
            "identity": IDENTITY,
            "fingerprint": fingerprint,
            "table": self.database.table,
            "clock": self.face.clock,
        }
        if self.face.name.endswith("-async"):
            return asyncio.run(self._arun(body, options))
        with self._connection() as connection:

            def phase(step: Step) -> bytes | None:
                row, outcome = body(connection, step)
                transactions.insert_if_absent(connection, self.log, row, unique=["id"])
                return outcome

            return transactions.run_phases(connection, dict.fromkeys(PHASES, phase), **options)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if self.face.name != "sqlalchemy":
            connection = self.database.connect()
            try:
                yield connection
            finally:
                connection.close()
            return
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        engine = create_engine(self.database.sqlalchemy_url(), poolclass=NullPool)
        try:
            with Session(engine) as session:
                yield session
        finally:
            engine.dispose()

    async def _arun(
        self,
        body: Callable[[Any, Step], tuple[dict[str, object], bytes | None]],
        options: dict[str, Any],
    ) -> PhasesResult:
        async with self._aconnection() as connection:

            async def phase(step: Step) -> bytes | None:
                row, outcome = body(connection, step)
                await transactions.ainsert_if_absent(connection, self.log, row, unique=["id"])
                return outcome

            phases: dict[str, Callable[[Step], Awaitable[bytes | None]]] = dict.fromkeys(
                PHASES, phase
            )
            return await transactions.arun_phases(connection, phases, **options)

    @contextlib.asynccontextmanager
    async def _aconnection(self) -> Any:
        if self.face.name == "psycopg-async":
            connection = await self.database.aconnect()
            try:
                yield connection
            finally:
                await connection.close()
            return
        from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
        from sqlalchemy.pool import NullPool

        engine = create_async_engine(self.database.sqlalchemy_url(), poolclass=NullPool)
        try:
            async with AsyncSession(engine) as session:
                yield session
        finally:
            await engine.dispose()

    def record(self) -> Record | None:
        """Return the order's record as the store sees it."""
        store = self.database.store(self.face.clock)
        try:
            return store.get(IDENTITY)
        finally:
            store.close()


@pytest.fixture
def order(face: Face) -> Order:
    """A phased order on each driver face."""
    return Order(face)


def test_b30_phases_commit_in_order_then_replay(order: Order) -> None:
    """All phases run once, in order; a repeat replays the outcome and runs none."""
    first = order.run()
    assert first == PhasesResult(b"order done", replay=False, resumed_from=None, ran=PHASES)
    assert order.logged() == sorted(PHASES)
    again = order.run()
    assert again == PhasesResult(b"order done", replay=True, resumed_from=None, ran=())
    assert order.logged() == sorted(PHASES)
    record = order.record()
    assert record is not None
    assert record.state is State.DONE
    assert record.outcome == b"order done"


def test_b30_a_failed_phase_resumes_after_the_last_committed_one(order: Order) -> None:
    """An exception rolls back its phase only; the retry resumes at once after the last
    committed phase, and the foreign key it derives is the same as before."""
    with pytest.raises(BoomError):
        order.run(fail_in="charge")
    record = order.record()
    assert record is not None
    assert record.state is State.IN_FLIGHT
    assert record.recovery_point == "reserve"
    assert record.lease_expires_at <= order.face.clock.now()  # ended, so no wait for a retry
    assert order.logged() == ["reserve"]
    result = order.run()
    assert result == PhasesResult(
        b"order done", replay=False, resumed_from="reserve", ran=("charge", "finish")
    )
    assert order.logged() == sorted(PHASES)
    charge_keys = order.foreign_keys[1:3]  # the failed charge, then the resumed one
    assert charge_keys[0] == charge_keys[1]


def test_b30_a_phase_may_finish_the_operation_early(order: Order) -> None:
    """A phase that returns an outcome finishes the operation; later phases never run."""
    assert order.run(finish_early_in="charge").ran == ("reserve", "charge")
    again = order.run()
    assert again.replay
    assert again.outcome == b"declined"
    assert order.logged() == ["charge", "reserve"]


def test_b13_b16_duplicates_of_a_live_operation_are_refused(order: Order) -> None:
    """A live holder's key raises InFlightError; another request's raises KeyMismatchError."""
    store = order.database.store(order.face.clock)
    try:
        store.claim(IDENTITY, "fp", lease=30, retention=3600)
    finally:
        store.close()
    with pytest.raises(InFlightError):
        order.run()
    with pytest.raises(KeyMismatchError):
        order.run(fingerprint="another request")
    order.face.clock.advance(31)
    assert order.run().ran == PHASES
    assert order.logged() == sorted(PHASES)


@pytest.mark.parametrize("database", ["sqlite", "postgres"], indirect=True)
def test_b17_a_taken_over_holder_cannot_renew_or_checkpoint(
    database: Database, clock: ManualClock
) -> None:
    """Once a retry has taken the record over, the old holder's renewal and checkpoint in its
    next phase raise FencedError, so it commits nothing more."""
    from retrysafe.transactions._open import sync_backend

    old, new = database.connect(), database.connect()
    try:
        first, second = sync_backend(old, database.table), sync_backend(new, database.table)
        claims = []
        for backend in (first, second):
            backend.begin()
            claims.append(backend.claim(IDENTITY, "fp", now=clock.now(), lease=30, retention=3600))
            backend.end(commit=True)
            clock.advance(31)
        assert claims[1].taken_over
        first.begin()
        with pytest.raises(FencedError):
            first.renew(IDENTITY, claims[0].token, now=clock.now(), lease=30)
        first.end(commit=False)
        first.begin()
        with pytest.raises(FencedError):
            first.checkpoint(IDENTITY, claims[0].token, "reserve", now=clock.now())
        first.end(commit=False)
    finally:
        old.close()
        new.close()


def test_b30_foreign_keys_are_derived_and_stable() -> None:
    """The same record and phase derive the same UUID; anything else derives another, and
    the client's key cannot be read in it."""
    record = Record(IDENTITY, "fp", State.IN_FLIGHT, "token", 1000.0, 1030.0, 5000.0)
    key = foreign_key(record, "charge")
    assert uuid.UUID(key).version == 8
    assert uuid.UUID(key).variant == uuid.RFC_4122
    assert foreign_key(record, "charge") == key
    taken_over = dataclasses.replace(record, token="other", lease_expires_at=2000.0)
    assert foreign_key(taken_over, "charge") == key  # a takeover keeps identity and creation
    others = {
        foreign_key(record, "refund"),
        foreign_key(record, "charge", "second"),
        foreign_key(
            dataclasses.replace(record, identity=Identity("orders", "b", "order-1")), "charge"
        ),
        foreign_key(dataclasses.replace(record, created_at=1001.0), "charge"),
    }
    assert key not in others
    assert len(others) == 4
    assert "order-1" not in key
    assert Step("charge", record).foreign_key() == key


def test_phases_need_a_connection_without_an_open_transaction(tmp_path: Any) -> None:
    """Each phase commits on its own, so a connection inside a transaction is refused, and
    so are an empty plan and a changed phase list."""
    import sqlite3

    connection = sqlite3.connect(str(tmp_path / "app.db"))
    try:
        options: dict[str, Any] = {"identity": IDENTITY, "fingerprint": "fp"}
        with pytest.raises(ConfigurationError):
            transactions.run_phases(connection, {}, **options)
        connection.execute("CREATE TABLE t (x INTEGER)")
        connection.execute("INSERT INTO t VALUES (1)")
        assert connection.in_transaction
        with pytest.raises(ConfigurationError, match="commit or roll back"):
            transactions.run_phases(connection, {"one": lambda step: b"x"}, **options)
        connection.rollback()
        with pytest.raises(BoomError):
            transactions.run_phases(
                connection, {"one": lambda step: None, "two": _raise}, **options
            )
        with pytest.raises(ConfigurationError, match="recovery point"):
            transactions.run_phases(connection, {"renamed": lambda step: b"x"}, **options)
        bad: dict[str, Any] = {"one": lambda step: None, "two": lambda step: 1}
        with pytest.raises(TypeError):
            transactions.run_phases(connection, bad, **options)
    finally:
        connection.close()


def _raise(step: Step) -> bytes:
    raise BoomError
