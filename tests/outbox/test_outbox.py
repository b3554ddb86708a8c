"""The transactional outbox: messages commit with the writes and the record; the relay publishes
them in order, marks them, purges them, and on PostgreSQL shares the work between relays.

Real SQLite files and a real PostgreSQL server (`tests/transactions/conftest.py` databases),
through every driver face transactional mode has; the relay with a publisher that records.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrysafe import Identity, ManualClock, Record, State, transactions
from retrysafe._errors import ConfigurationError
from retrysafe.outbox import Outbox, OutboxMessage, Relay, message_id, outbox_table
from retrysafe.transactions import Step, run_phases
from tests.transactions.conftest import Database, make_database

FACES = [
    ("sqlite", "sqlite3"),
    ("sqlite", "sqlalchemy"),
    ("postgres", "psycopg"),
    ("postgres", "psycopg-async"),
    ("postgres", "sqlalchemy"),
    ("postgres", "sqlalchemy-async"),
]
WAIT = 10.0
HEADERS = {"Idempotency-Key": '"k1"', "Authorization": "Bearer tenant-a"}


class BlockError(Exception):
    """Raised inside a transaction by a test, after its messages were added."""


@contextlib.contextmanager
def database_of(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh database whose outbox table is dropped with it."""
    with make_database(kind, request, tmp_path) as database:
        database.extra_tables.append(outbox_table(database.table))
        yield database


def order(face: str, database: Database, key: str, *, fail: bool = False) -> list[str]:
    """Record one payment for `key` with two messages in one transaction; return their ids
    (none for a replay). `fail` raises `BlockError` inside the block, after the messages."""
    options: dict[str, Any] = {
        "identity": Identity("orders", "t", key),
        "fingerprint": "f",
        "table": database.table,
    }
    row = (key, key, 1)
    insert = f"INSERT INTO {database.payments} VALUES (?, ?, ?)"  # noqa: S608 - a test's table

    def block(tx: Any) -> list[str]:
        ids = [tx.outbox.add("orders.paid", json.dumps([key, n]).encode()) for n in range(2)]
        if fail:
            raise BlockError
        tx.complete(b"done")
        return ids

    if face in ("sqlite3", "psycopg"):
        with contextlib.closing(database.connect()) as conn:
            opener = transactions.sqlite if face == "sqlite3" else transactions.psycopg
            with opener(conn, **options) as tx:
                if tx.replay:
                    return []
                conn.execute(insert.replace("?", database.mark), row)
                return block(tx)
    if face == "psycopg-async":
        return asyncio.run(_async_psycopg(database, options, insert.replace("?", "%s"), row, block))
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session
    from sqlalchemy.pool import NullPool

    if face == "sqlalchemy-async":
        return asyncio.run(_async_session(database, options, insert, row, block))
    engine = create_engine(database.sqlalchemy_url(), poolclass=NullPool)
    try:
        with Session(engine) as session, transactions.sqlalchemy(session, **options) as tx:
            if tx.replay:
                return []
            session.execute(
                text(insert.replace("?", ":p", 1).replace("?", ":q", 1).replace("?", ":r")),
                dict(zip("pqr", row, strict=True)),
            )
            return block(tx)
    finally:
        engine.dispose()


async def _async_psycopg(
    database: Database, options: Any, insert: str, row: Any, block: Any
) -> list[str]:
    conn = await database.aconnect()
    try:
        async with transactions.psycopg(conn, **options) as tx:
            if tx.replay:
                return []
            await conn.execute(insert, row)
            return list(block(tx))
    finally:
        await conn.close()


async def _async_session(
    database: Database, options: Any, insert: str, row: Any, block: Any
) -> list[str]:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(database.sqlalchemy_url(asynchronous=True), poolclass=NullPool)
    statement = text(insert.replace("?", ":p", 1).replace("?", ":q", 1).replace("?", ":r"))
    try:
        async with (
            AsyncSession(engine) as session,
            transactions.sqlalchemy(session, **options) as tx,
        ):
            if tx.replay:
                return []
            await session.execute(statement, dict(zip("pqr", row, strict=True)))
            return list(block(tx))
    finally:
        await engine.dispose()


def stored_ids(database: Database) -> list[str]:
    """The message ids in the outbox table, in id order."""
    table = outbox_table(database.table)
    return [row[0] for row in database.execute(f'SELECT message_id FROM "{table}" ORDER BY id')]  # noqa: S608


def ids_of(database: Database, key: str) -> list[str]:
    """The ids of the two messages that `order(face, database, key)` adds."""
    return derived_ids(database, Identity("orders", "t", key))


def derived_ids(
    database: Database, identity: Identity, count: int = 2, phase: str = ""
) -> list[str]:
    """The ids of the first `count` messages of `identity`'s operation, from its stored record
    (they derive from its identity and creation time)."""
    with contextlib.closing(database.store()) as store:
        record = store.get(identity)
    assert record is not None, f"no record of {identity}"
    return [message_id(record, n, phase) for n in range(count)]


@pytest.mark.parametrize(("kind", "face"), FACES, ids=[f"{k}-{f}" for k, f in FACES])
def test_b29_messages_commit_with_the_writes_and_the_record(
    kind: str, face: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A committed block writes its messages with derived ids; a replay and a rollback add
    none, and the rolled-back block's payment is gone with its messages."""
    with database_of(kind, request, tmp_path) as database:
        assert order(face, database, "a") == ids_of(database, "a")
        assert order(face, database, "a") == []  # a replay
        with pytest.raises(BlockError):
            order(face, database, "b", fail=True)
        assert stored_ids(database) == ids_of(database, "a")
        assert [row[0] for row in database.payment_rows()] == ["a"]
        assert order(face, database, "b") == ids_of(database, "b")  # the retry derives the same ids
        assert stored_ids(database) == ids_of(database, "a") + ids_of(database, "b")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_b29_a_key_used_again_after_its_retention_gets_messages_of_its_own(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Past its retention a key is a new operation: its committed messages are stored and
    published beside the first operation's, under ids of their own (they were dropped as the
    first one's, the insert's conflict hiding them). Atomic phases alike."""
    clock = ManualClock()
    identity = Identity("orders", "t", "reused")
    published: list[OutboxMessage] = []
    with database_of(kind, request, tmp_path) as database:
        opener = transactions.sqlite if kind == "sqlite" else transactions.psycopg
        options: dict[str, Any] = {
            "identity": identity, "fingerprint": "f", "table": database.table,
            "retention": 60, "clock": clock,
        }  # fmt: skip
        runs = []
        for _ in range(2):
            with contextlib.closing(database.connect()) as conn, opener(conn, **options) as tx:
                assert not tx.replay
                runs.append(tx.outbox.add("orders.paid", b"%d" % len(runs)))
                tx.complete(b"done")
            clock.advance(61)  # the retention ends: the key is free again

        def charge(step: Step) -> None:
            step.outbox.add("orders.charged", b"p")

        phases = {"charge": charge, "finish": lambda step: b"ok"}
        phased = {**options, "identity": Identity("orders", "t", "phased")}
        with contextlib.closing(database.connect()) as conn:
            for _ in range(2):
                assert not run_phases(conn, phases, **phased).replay
                clock.advance(61)
        with Relay(database.url, published.append) as relay:
            assert relay.run_once() == 4
        assert runs[0] != runs[1]
        assert [m.payload for m in published] == [b"0", b"1", b"p", b"p"]
        assert len({m.message_id for m in published}) == 4


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_b30_a_phase_writes_its_messages_when_it_commits(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A phase that raises writes none of its messages; run again, it writes them with ids
    derived from the record's identity and the phase."""
    identity = Identity("orders", "t", "phased")
    attempts: list[str] = []

    def charge(step: Step) -> bytes | None:
        step.outbox.add("orders.charged", b"{}")
        attempts.append(step.name)
        if len(attempts) == 1:
            raise BlockError
        return None

    def finish(step: Step) -> bytes:
        step.outbox.add("orders.done", b"{}")
        return b"ok"

    with database_of(kind, request, tmp_path) as database:
        phases = {"charge": charge, "finish": finish}
        options: dict[str, Any] = {
            "identity": identity,
            "fingerprint": "f",
            "table": database.table,
        }
        with contextlib.closing(database.connect()) as conn:
            with pytest.raises(BlockError):
                run_phases(conn, phases, **options)
            assert run_phases(conn, phases, **options).outcome == b"ok"
        charge_ids = derived_ids(database, identity, 1, "charge")
        assert stored_ids(database) == charge_ids + derived_ids(database, identity, 1, "finish")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_relay_publishes_in_id_order_marks_and_purges(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The relay hands committed messages to the publisher in id order, once each, marks them,
    and deletes them once the retention has passed."""
    clock = ManualClock()
    got: list[OutboxMessage] = []
    with database_of(kind, request, tmp_path) as database:
        for key in "abc":
            order("sqlite3" if kind == "sqlite" else "psycopg", database, key)
        with Relay(database.url, got.append, batch=4, retention=60, clock=clock) as relay:
            assert relay.run_once() == 4
            assert relay.run_once() == 2
            assert relay.run_once() == 0
            assert [m.message_id for m in got] == ids_of(database, "a") + ids_of(
                database, "b"
            ) + ids_of(database, "c")
            assert got[0].topic == "orders.paid"
            assert json.loads(got[0].payload) == ["a", 0]
            assert stored_ids(database) == [m.message_id for m in got]
            clock.advance(61)
            assert relay.run_once() == 0
            assert stored_ids(database) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_publisher_failure_keeps_the_messages_after_it_for_later(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """When the publisher raises, the messages it took are marked and the rest are published
    by the next batch, in order, none twice."""
    got: list[str] = []

    def publish(message: OutboxMessage) -> None:
        if len(got) == 1 and not failed:
            failed.append(True)
            raise ConnectionError("broker gone")
        got.append(message.message_id)

    failed: list[bool] = []
    with database_of(kind, request, tmp_path) as database:
        order("sqlite3" if kind == "sqlite" else "psycopg", database, "a")
        with Relay(database.url, publish) as relay:
            with pytest.raises(ConnectionError):
                relay.run_once()
            assert relay.run_once() == 1
        assert got == ids_of(database, "a")


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_relay_takes_the_store_url_with_its_wrappers_options(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The store's URL as `open_store` takes it, with the replay cache's and encryption's
    options, names the same database and table to the relay."""
    got: list[str] = []
    with database_of(kind, request, tmp_path) as database:
        order("sqlite3" if kind == "sqlite" else "psycopg", database, "a")
        url = f"{database.url}&replay_cache=100&replay_cache_ttl=2&encryption_key_env=KEYS"
        with Relay(url, lambda message: got.append(message.message_id)) as relay:
            assert relay.run_once() == 2
        assert got == ids_of(database, "a")


def test_two_postgres_relays_share_the_work_and_never_publish_twice(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """While relay A holds its batch (locked, unpublished), relay B skips those rows and
    publishes the others; together they publish every message exactly once."""
    with database_of("postgres", request, tmp_path) as database:
        for n in range(10):
            order("psycopg", database, f"k{n}")
        published: list[tuple[str, str]] = []
        a_holding, b_published = threading.Event(), threading.Event()
        lock = threading.Lock()

        def publisher(name: str) -> Any:
            def publish(message: OutboxMessage) -> None:
                with lock:
                    published.append((name, message.message_id))
                if name == "B":
                    b_published.set()
                    return
                a_holding.set()  # A has its first batch locked, and publishes it...
                if not b_published.wait(WAIT):  # ...only once B published some other rows
                    raise AssertionError("relay B waited for relay A's locked rows")

            return publish

        def drain(relay: Relay) -> None:
            while relay.run_once():
                pass

        with (
            Relay(database.url, publisher("A"), batch=5) as a,
            Relay(database.url, publisher("B"), batch=5) as b,
        ):
            thread = threading.Thread(target=drain, args=(a,))
            thread.start()
            assert a_holding.wait(WAIT), "relay A never took a batch"
            drain(b)
            thread.join(WAIT)
            assert not thread.is_alive()
        ids = [message for _, message in published]
        assert sorted(ids) == sorted(stored_ids(database))
        assert len(ids) == len(set(ids)) == 20
        assert {name for name, _ in published} == {"A", "B"}


def test_message_ids_and_table_names_are_derived() -> None:
    """Ids derive from the operation's identity and creation time, the phase and the index;
    the outbox table sits next to the records."""
    identity = Identity("orders", "t", "k")
    record = Record(identity, "f", State.IN_FLIGHT, "token", 100.0, 130.0, 86_500.0)
    outbox = Outbox(record)
    assert outbox.add("t", b"x") == message_id(record, 0)
    assert outbox.add("t", b"y", headers={"h": "v"}) == message_id(record, 1)
    assert message_id(record, 0, "charge") != message_id(record, 0)
    taken_over = dataclasses.replace(record, token="other", lease_expires_at=200.0)
    assert message_id(taken_over, 0) == message_id(record, 0)  # the same operation
    used_again = dataclasses.replace(record, created_at=90_000.0)
    assert message_id(used_again, 0) != message_id(record, 0)  # a new one, past retention
    assert outbox_table("retrysafe_records") == "retrysafe_outbox"
    assert outbox_table("orders") == "orders_outbox"
    assert len(outbox_table("x" * 63)) <= 63
    with pytest.raises(ConfigurationError):
        outbox.add("", b"x")
    with pytest.raises(TypeError):
        outbox.add("t", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        outbox.add("t", b"x", headers={"n": 1})  # type: ignore[dict-item]


def test_the_flask_face_commits_the_outbox_with_the_response(tmp_path: Path) -> None:
    """A transactional Flask view's `tx.outbox` commits with its response; a repeat of the
    request replays and adds nothing."""
    flask = pytest.importorskip("flask")
    from retrysafe.transactions.flask import install, transactional

    path = tmp_path / "app.db"
    app = flask.Flask(__name__)
    install(app, connect=lambda: sqlite3.connect(path, timeout=30))

    @app.post("/orders")
    @transactional(required=True)
    def create(tx: Any) -> Any:
        return {"id": tx.outbox.add("orders.created", b"{}")}, 201

    client = app.test_client()
    first = client.post("/orders", headers=HEADERS, json={})
    again = client.post("/orders", headers=HEADERS, json={})
    assert first.status_code == again.status_code == 201
    assert first.json == again.json
    with contextlib.closing(sqlite3.connect(path)) as conn:
        rows = conn.execute("SELECT message_id FROM retrysafe_outbox").fetchall()
    assert rows == [(first.json["id"],)]
