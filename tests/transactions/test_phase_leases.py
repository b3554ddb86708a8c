"""Atomic phases keep a live holder's lease and their own transaction (B16, B29, B30).

A phase that outlasts its lease is not taken over when it commits: the commit renews the lease,
so a claim that waited on the phase's row lock (a client's retry, a completer pass) finds it
live. A phase that commits or rolls back the connection itself is refused, not recorded as done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import (
    FencedError,
    Identity,
    InFlightError,
    ManualClock,
    Record,
    State,
    transactions,
)
from retrysafe.transactions import PhasesResult, Step
from retrysafe.transactions._dispatch import sync_backend
from retrysafe.transactions._sync.phases import run_phases_on
from retrysafe.transactions._sync.transaction import Backend
from tests.transactions.conftest import BoomError, Database, make_database

IDENTITY = Identity("orders", "tenant-a", "order-1")
WAIT = 10.0  # seconds any wait of these tests is bounded by
ENDED = "committed or rolled back the connection itself"


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A SQLite file, a real PostgreSQL server or a real MariaDB server, with tables of its own."""
    with make_database(str(request.param), request, tmp_path) as made:
        yield made


def _connect(database: Database) -> Any:
    """Open a driver connection that a thread other than its opener may use."""
    if database.kind == "sqlite":
        return sqlite3.connect(database.dsn, timeout=30, check_same_thread=False)
    return database.connect()


def _log_table(database: Database) -> str:
    return database.create_table("rs_log", "id TEXT PRIMARY KEY, who TEXT, phase TEXT")


def _log(database: Database, connection: Any, table: str, who: str, phase: str) -> None:
    """Log that `who` ran `phase`, in the transaction open on `connection`."""
    row = {"id": f"{who}-{phase}", "who": who, "phase": phase}
    transactions.insert_if_absent(connection, table, row, unique=["id"])


def _logged(database: Database, table: str) -> list[tuple[str, str]]:
    rows = database.execute(f"SELECT who, phase FROM {table}")  # noqa: S608 - a unique_name() table
    return sorted((str(who), str(phase)) for who, phase in rows)


def _record(database: Database, clock: ManualClock) -> Record | None:
    store = database.store(clock)
    try:
        return store.get(IDENTITY)
    finally:
        store.close()


def _wait_until(condition: Callable[[], bool]) -> bool:
    """Poll `condition` until it holds, for at most WAIT seconds; return whether it held."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def _waits_on_a_lock(database: Database, connection: Any) -> Callable[[], bool]:
    """Return whether `connection`'s session is waiting on a lock (PostgreSQL and MySQL; a
    SQLite connection waits in its busy handler, which nothing shows)."""
    if database.kind == "postgres":
        pid = connection.info.backend_pid
        query = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = ?"
        return lambda: database.execute(query, (pid,)) == [(True,)]
    if database.kind == "mysql":
        thread = connection.thread_id()
        query = "SELECT trx_state FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = ?"
        return lambda: database.execute(query, (thread,)) == [("LOCK WAIT",)]
    return lambda: True


class GatedBackend:
    """`backend`, whose first `begin` once `armed` is set waits for `gate`: the holder's next
    phase starts only once the second claimant is done."""

    def __init__(self, backend: Backend, armed: threading.Event, gate: threading.Event) -> None:
        self.backend = backend
        self.armed = armed
        self.gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)

    def begin(self) -> None:
        """Begin, once the second claimant is done if the gate is armed."""
        if self.armed.is_set():
            self.armed.clear()
            assert self.gate.wait(WAIT)
        self.backend.begin()


def test_b16_a_phase_longer_than_its_lease_is_not_taken_over_when_it_commits(
    database: Database, clock: ManualClock
) -> None:
    """A holder whose phase "b" outlasts its lease commits it with the lease renewed: a retry
    that waited on the phase's lock meanwhile is refused as in flight, and the holder finishes
    its operation, every phase committed once, by its own token."""
    log = _log_table(database)
    store = database.store(clock)
    store.get(IDENTITY)  # the store makes its table now, not while a phase holds it
    store.close()
    in_b, release_b, claimant_done, armed = (threading.Event() for _ in range(4))
    results: dict[str, object] = {}
    tokens: list[str] = []

    def phases(who: str, connection: Any) -> dict[str, Callable[[Step], bytes | None]]:
        def phase(step: Step) -> bytes | None:
            if who == "holder" and step.name == "a":
                tokens.append(step.record.token)
            if who == "holder" and step.name == "b":
                in_b.set()
                assert release_b.wait(WAIT)
                armed.set()  # the holder's next phase waits for the claimant
            _log(database, connection, log, who, step.name)
            return who.encode() if step.name == "c" else None

        return dict.fromkeys("abc", phase)

    def holder(connection: Any) -> None:
        backend = GatedBackend(sync_backend(connection, database.table), armed, claimant_done)
        try:
            results["holder"] = run_phases_on(
                backend,
                phases("holder", connection),
                identity=IDENTITY,
                fingerprint="fp",
                lease=30,
                clock=clock,
            )
        except Exception as error:
            results["holder"] = error

    def claimant(connection: Any) -> None:
        try:
            results["claimant"] = transactions.run_phases(
                connection,
                phases("claimant", connection),
                identity=IDENTITY,
                fingerprint="fp",
                table=database.table,
                lease=30,
                clock=clock,
            )
        except Exception as error:
            results["claimant"] = error
        finally:
            claimant_done.set()

    first, second = _connect(database), _connect(database)
    threads = [
        threading.Thread(target=holder, args=(first,)),
        threading.Thread(target=claimant, args=(second,)),
    ]
    try:
        threads[0].start()
        assert in_b.wait(WAIT), results
        clock.advance(31)  # the lease renewed as "b" began has run out; the holder lives on
        waits = _waits_on_a_lock(database, second)
        threads[1].start()
        waiting = _wait_until(waits)
        release_b.set()
        for thread in threads:
            thread.join(WAIT * 2)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        release_b.set()
        claimant_done.set()
        first.close()
        second.close()
    assert waiting  # the claimant waited behind the phase's lock
    assert results["holder"] == PhasesResult(b"holder", False, None, ("a", "b", "c"))
    assert isinstance(results["claimant"], InFlightError)
    assert _logged(database, log) == [("holder", "a"), ("holder", "b"), ("holder", "c")]
    record = _record(database, clock)
    assert record is not None
    assert (record.state, record.outcome, record.token) == (State.DONE, b"holder", tokens[0])


@pytest.mark.parametrize("kind", ["postgres"])
def test_b16_a_completer_pass_behind_a_long_phase_leaves_the_live_client_alone(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> None:
    """The reviewer's case: a completer pass that reaches a client's operation while its phase
    "b" outlasts the lease waits on the phase's row lock, then passes over it; the client is
    not fenced, and finishes with each phase committed once and no request left stored."""
    import psycopg

    from retrysafe.completer import Completer, Pass, Registry

    with make_database(kind, request, tmp_path) as database:
        log = _log_table(database)
        store = database.store(clock)
        in_b, release_b, completer_done = threading.Event(), threading.Event(), threading.Event()
        registry = Registry()

        @registry.operation("orders")
        def build(request: bytes, connection: Any) -> dict[str, Callable[[Step], bytes | None]]:
            who = request.decode()

            def phase(step: Step) -> bytes | None:
                if who == "client" and step.name == "b":
                    in_b.set()
                    assert release_b.wait(WAIT)
                _log(database, connection, log, who, step.name)
                return who.encode() if step.name == "c" else None

            return dict.fromkeys("abc", phase)

        class ClientClock:
            """The client's clock: once "b" has committed, its next reading (which "c" makes
            before it touches the record) waits for the completer's pass to end."""

            def now(self) -> float:
                if not completer_done.is_set():
                    record = store.get(IDENTITY)
                    if record is not None and record.recovery_point == "b":
                        assert completer_done.wait(WAIT)
                return clock.now()

        results: dict[str, object] = {}
        clock_ = ClientClock()
        opened: list[psycopg.Connection[Any]] = []
        pids: list[int] = []

        def connect() -> psycopg.Connection[Any]:
            opened.append(database.connect())
            pids.append(opened[-1].info.backend_pid)
            return opened[-1]

        def completer_waits() -> bool:
            query = "SELECT wait_event_type FROM pg_stat_activity WHERE pid = ?"
            return any(database.execute(query, (pid,)) == [("Lock",)] for pid in list(pids))

        def client(connection: psycopg.Connection[Any]) -> None:
            try:
                results["client"] = registry.run(
                    connection, IDENTITY, b"client", table=database.table, lease=30, clock=clock_
                )
            except Exception as error:
                results["client"] = error

        def complete() -> None:
            try:
                completer = Completer(registry, connect=connect, table=database.table, clock=clock)
                results["completer"] = completer.run_once()
            except Exception as error:
                results["completer"] = error
            finally:
                completer_done.set()

        store.get(IDENTITY)  # the store makes its table now, not while a phase holds it
        connection = database.connect()
        threads = [
            threading.Thread(target=client, args=(connection,)),
            threading.Thread(target=complete),
        ]
        try:
            threads[0].start()
            assert in_b.wait(WAIT), results
            clock.advance(31)  # the lease renewed as "b" began has run out
            threads[1].start()
            waiting = _wait_until(completer_waits)
            release_b.set()
            for thread in threads:
                thread.join(WAIT * 2)
            assert not any(thread.is_alive() for thread in threads)
        finally:
            release_b.set()
            completer_done.set()
            connection.close()
            for conn in opened:
                conn.close()
            store.close()
        assert waiting  # the completer's claim waited behind the phase's row lock
        assert results["client"] == PhasesResult(b"client", False, None, ("a", "b", "c"))
        assert results["completer"] == Pass(skipped=1)
        assert _logged(database, log) == [("client", "a"), ("client", "b"), ("client", "c")]
        resumable = f'SELECT COUNT(*) FROM "{database.table}_resumable"'  # noqa: S608
        assert database.execute(resumable) == [(0,)]


def test_b16_a_holder_taken_over_between_phases_is_fenced_without_a_warning(
    database: Database, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder that stalls between phases past its lease is taken over; its next phase raises
    FencedError and commits nothing, and leaving the lease to the new holder logs no warning."""
    log = _log_table(database)
    armed, gate = threading.Event(), threading.Event()
    results: dict[str, object] = {}
    second = database.connect()

    def phases(who: str, connection: Any) -> dict[str, Callable[[Step], bytes | None]]:
        def phase(step: Step) -> bytes | None:
            _log(database, connection, log, who, step.name)
            if who == "stalled":
                armed.set()  # between this phase and the next, the holder stalls
            return who.encode() if step.name == "b" else None

        return dict.fromkeys("ab", phase)

    class TakeOverFirst(GatedBackend):
        def begin(self) -> None:
            if self.armed.is_set():
                self.armed.clear()
                clock.advance(31)
                results["retry"] = transactions.run_phases(
                    second,
                    phases("retry", second),
                    identity=IDENTITY,
                    fingerprint="fp",
                    table=database.table,
                    lease=30,
                    clock=clock,
                )
            self.backend.begin()

    first = database.connect()
    try:
        backend = TakeOverFirst(sync_backend(first, database.table), armed, gate)
        with caplog.at_level(logging.DEBUG, logger="retrysafe"), pytest.raises(FencedError):
            run_phases_on(
                backend, phases("stalled", first), identity=IDENTITY, fingerprint="fp", clock=clock
            )
    finally:
        first.close()
        second.close()
    assert results["retry"] == PhasesResult(b"retry", False, "a", ("b",))
    assert _logged(database, log) == [("retry", "b"), ("stalled", "a")]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@contextlib.contextmanager
def _connected(database: Database) -> Iterator[Any]:
    connection = database.connect()
    try:
        yield connection
    finally:
        connection.close()


def _ledger_count(database: Database, ledger: str) -> int:
    return int(database.execute(f"SELECT COUNT(*) FROM {ledger}")[0][0])  # noqa: S608


def _ended_inside(ending: str, then_raise: bool) -> Callable[[Any], None]:
    """Return what a phase does to its connection: end its transaction as `ending` says."""

    def end(connection: Any) -> None:
        getattr(connection, ending)()
        if then_raise:
            raise BoomError

    return end


@pytest.mark.parametrize("case", ["commit", "commit+raise", "rollback"])
@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_b30_a_phase_that_ends_its_own_transaction_is_refused_and_not_recorded(
    kind: str, case: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> None:
    """A phase that commits (or rolls back) the sqlite3 or PyMySQL connection itself, and then
    returns or raises, raises RuntimeError: the phase is not recorded as done, no later phase
    runs, and the lease is ended for a retry."""
    ending, then_raise = case.removesuffix("+raise"), case.endswith("+raise")
    with make_database(kind, request, tmp_path) as database:
        ledger = database.create_table("rs_ledger", "id TEXT PRIMARY KEY")
        ran: list[str] = []
        end = _ended_inside(ending, then_raise)
        with _connected(database) as connection:

            def first(step: Step) -> None:
                ran.append(step.name)
                transactions.insert_if_absent(connection, ledger, {"id": "charge"}, unique=["id"])
                end(connection)

            def second(step: Step) -> bytes:
                ran.append(step.name)
                return b"done"

            with pytest.raises(RuntimeError, match=ENDED) as raised:
                transactions.run_phases(
                    connection,
                    {"a": first, "b": second},
                    identity=IDENTITY,
                    fingerprint="fp",
                    table=database.table,
                    clock=clock,
                )
        assert isinstance(raised.value.__cause__, BoomError) is then_raise
        assert ran == ["a"]
        record = _record(database, clock)
        assert record is not None
        assert (record.state, record.recovery_point) == (State.IN_FLIGHT, None)
        assert record.lease_expires_at <= clock.now()  # ended: a retry need not wait
        assert _ledger_count(database, ledger) == (1 if ending == "commit" else 0)


@pytest.mark.parametrize("kind", ["mysql"])
def test_b30_an_async_phase_that_commits_its_aiomysql_connection_is_refused(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock
) -> None:
    """On aiomysql too, a phase that commits the connection itself raises RuntimeError and is
    not recorded as done."""
    with make_database(kind, request, tmp_path) as database:
        ledger = database.create_table("rs_ledger", "id TEXT PRIMARY KEY")

        async def run() -> None:
            connection = await database.aconnect()
            try:

                async def first(step: Step) -> None:
                    row = {"id": "charge"}
                    await transactions.ainsert_if_absent(connection, ledger, row, unique=["id"])
                    await connection.commit()

                async def second(step: Step) -> bytes:
                    return b"done"

                with pytest.raises(RuntimeError, match=ENDED):
                    await transactions.arun_phases(
                        connection,
                        {"a": first, "b": second},
                        identity=IDENTITY,
                        fingerprint="fp",
                        table=database.table,
                        clock=clock,
                    )
            finally:
                await connection.ensure_closed()

        asyncio.run(run())
        record = _record(database, clock)
        assert record is not None
        assert (record.state, record.recovery_point) == (State.IN_FLIGHT, None)
        assert _ledger_count(database, ledger) == 1
