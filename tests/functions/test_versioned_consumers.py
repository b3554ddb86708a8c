"""Versioned consumers: a message applies only if its version is newer than its entity's last.

Both modes (a store; the handler's own SQLite or PostgreSQL connection) against real backends:
generated out-of-order and duplicate deliveries end where in-order single delivery ends, older
and equal versions are skipped and counted, one entity's deliveries never apply out of order
even when they race, a SIGKILL between the effect and the commit leaves both or neither, and a
real RabbitMQ queue fed duplicates out of order ends in the in-order state.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from retrysafe import ConfigurationError, InvalidKeyError, open_async_store, open_store
from retrysafe.cli import app as cli
from retrysafe.consumers import (
    VersionCounter,
    message_header,
    should_requeue,
    versioned_message,
)
from tests.conftest import drop_postgres_tables, fresh_store_url, unique_name

# ruff: noqa: S608 - every table is named by unique_name(), never by input

ROOT = Path(__file__).resolve().parents[2]
WORKER_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Message:
    """A message as a broker hands it over: an id, its entity and version, a body."""

    message_id: str
    entity: str
    version: int

    @property
    def body(self) -> bytes:
        """The payload: what the entity looks like at this version."""
        return f"{self.entity}@{self.version}".encode()


def entity_of(message: Message) -> str:
    """The entity key function of the tests' messages."""
    return message.entity


def version_of(message: Message) -> int:
    """The version key function of the tests' messages."""
    return message.version


def message(entity: str, version: int) -> Message:
    """The one message that carries `version` of `entity` (its id is derived from both)."""
    return Message(f"{entity}-{version}", entity, version)


# Deliveries: a few entities, versions 1..12 each, in any order, any message up to 3 times,
# redelivered with its id or republished under a new one (then only its version tells).
deliveries = st.lists(
    st.tuples(st.sampled_from("abcde"), st.integers(1, 12), st.integers(1, 3), st.booleans()),
    min_size=1,
    max_size=60,
).flatmap(
    lambda picks: st.permutations(
        [
            Message(f"{entity}-{version}" + (f"#{n}" if new_id else ""), entity, version)
            for entity, version, times, new_id in picks
            for n in range(times)
        ]
    )
)


def expected_after(messages: list[Message]) -> tuple[dict[str, bytes], dict[str, int]]:
    """Return the in-order state (each entity's newest body) and the counts a versioned
    consumer must report for `messages` delivered in the given order."""
    newest: dict[str, int] = {}
    seen: set[str] = set()
    counts = {"applied": 0, "stale": 0, "replayed": 0}
    for m in messages:
        if m.message_id in seen:
            counts["replayed"] += 1
        elif m.version > newest.get(m.entity, 0):
            newest[m.entity] = m.version
            counts["applied"] += 1
        else:
            counts["stale"] += 1
        seen.add(m.message_id)
    return {e: message(e, v).body for e, v in newest.items()}, counts


def in_order_single(messages: list[Message]) -> list[Message]:
    """Each (entity, version) of `messages` once, in version order: the delivery to match."""
    once = {(m.entity, m.version): m for m in messages}
    return [once[pair] for pair in sorted(once)]


def counts_of(counter: VersionCounter) -> dict[str, int]:
    """The counter's counts, as `expected_after` gives them."""
    return {"applied": counter.applied, "stale": counter.stale, "replayed": counter.replayed}


# --- keys -------------------------------------------------------------------------------------


def test_message_header_reads_aio_pika_and_pika_headers() -> None:
    """`message_header` finds a header on an aio-pika message or among pika's arguments."""
    entity = message_header("entity")
    assert entity(aio_pika.Message(b"", headers={"entity": "order-1"})) == "order-1"
    properties = pika.BasicProperties(headers={"entity": "order-2"})
    assert entity(None, None, properties, b"") == "order-2"
    with pytest.raises(InvalidKeyError, match="no 'entity' header"):
        entity(aio_pika.Message(b""))


def test_malformed_entity_or_version_is_refused_before_any_effect(tmp_path: Path) -> None:
    """A missing entity or a version that is not an int raises InvalidKeyError, not requeued."""
    store = open_store("memory://")
    effects: list[Message] = []

    @versioned_message(store, namespace="orders", entity=entity_of, version=version_of)
    def handler(m: Message) -> None:
        effects.append(m)

    for bad in (Message("m-1", "", 1), Message("m-2", "a", True), Message("m-3", "a", 2**63)):  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError) as raised:
            handler(bad)
        assert not should_requeue(raised.value)
    assert handler(Message("m-4", "a", "7")) is None  # type: ignore[arg-type]
    assert effects == [Message("m-4", "a", "7")]  # type: ignore[arg-type]


def test_misconfigurations_are_refused_at_decoration() -> None:
    """Wrong colours, store options on a connection and a table on a store are refused."""
    store = open_store("memory://")
    keys: dict[str, Any] = {"namespace": "n", "entity": entity_of, "version": version_of}

    async def handle_async(m: Message) -> None: ...

    with pytest.raises(ConfigurationError, match="needs an async store"):
        versioned_message(store, **keys)(handle_async)
    with pytest.raises(ConfigurationError, match="table is for a database connection"):
        versioned_message(store, table="t", **keys)
    with (
        contextlib.closing(sqlite3.connect(":memory:")) as connection,
        pytest.raises(ConfigurationError, match="lease: store-mode options"),
    ):
        versioned_message(connection, lease=5, **keys)
    with pytest.raises(ConfigurationError, match=r"takes a store, a sqlite3\.Connection"):
        versioned_message(object(), **keys)
    with pytest.raises(ConfigurationError, match="non-empty namespace"):
        versioned_message(store, namespace="", entity=entity_of, version=version_of)


# --- store mode -------------------------------------------------------------------------------

STORE_BACKENDS = ["memory", "sqlite", "postgres", "mysql", "redis", "redis-cluster"]


@pytest.mark.parametrize("backend", STORE_BACKENDS)
def test_store_mode_skips_and_counts_older_and_equal_versions(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """On every store: newer versions apply, older and equal ones are skipped and counted, and
    a redelivered message id is answered by its claim."""
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_store(url)
        try:
            counter = VersionCounter()
            applied: list[Message] = []

            @versioned_message(
                store, namespace="orders", entity=entity_of, version=version_of, counter=counter
            )
            def handle(m: Message) -> str:
                applied.append(m)
                return m.body.decode()

            assert handle(message("a", 2)) == "a@2"
            assert handle(message("a", 1)) is None  # older: skipped
            assert handle(Message("other-id", "a", 2)) is None  # equal, another id: skipped
            assert handle(message("a", 2)) == "a@2"  # the same message again: its outcome
            assert handle(message("b", 1)) == "b@1"  # another entity
            assert handle(message("a", 3)) == "a@3"
            assert applied == [message("a", 2), message("b", 1), message("a", 3)]
            assert counts_of(counter) == {"applied": 3, "stale": 2, "replayed": 1}
            assert counter.skipped == 3
        finally:
            store.close()


def test_keys_list_the_entity_records_only_when_their_namespace_is_asked_for(
    tmp_path: Path,
) -> None:
    """The entities' records (in flight, their version the recovery point) are no claims left
    behind: `keys list` shows the messages' records, and the entities' under their namespace."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with contextlib.closing(open_store(url)) as store:
        handle = versioned_message(store, namespace="orders", entity=entity_of, version=version_of)(
            lambda m: m.body.decode()
        )
        handle(message("a", 1))

    def listed(*options: str) -> set[str]:
        result = CliRunner().invoke(cli, ["keys", "list", "--store", url, "--json", *options])
        assert result.exit_code == 0, result.output
        return {row["namespace"] for row in json.loads(result.stdout)["records"]}

    assert listed() == {"orders"}
    assert listed("--namespace", "orders#entities") == {"orders#entities"}


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["memory", "postgres", "redis"])
async def test_async_store_mode_skips_older_versions(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The async face does the same on async stores."""
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_async_store(url)
        try:
            counter = VersionCounter()
            applied: list[Message] = []

            @versioned_message(
                store, namespace="orders", entity=entity_of, version=version_of, counter=counter
            )
            async def handle(m: Message) -> None:
                applied.append(m)

            for m in (message("a", 3), message("a", 1), message("a", 3), message("a", 4)):
                await handle(m)
            assert applied == [message("a", 3), message("a", 4)]
            assert counts_of(counter) == {"applied": 2, "stale": 1, "replayed": 1}
        finally:
            await store.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_store_mode_generated_deliveries_end_in_the_in_order_state(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Thousands of generated deliveries, out of order and duplicated, over several entities,
    end in the state that in-order single delivery reaches, with every skip counted."""
    with fresh_store_url(backend, request, tmp_path) as url:
        store = open_store(url)
        try:

            @settings(max_examples=40, deadline=None, database=None)
            @given(deliveries)
            def run(messages: list[Message]) -> None:
                state, in_order = {}, {}
                counter = VersionCounter()
                namespace = unique_name("orders")
                keys = {"entity": entity_of, "version": version_of}
                shuffled = versioned_message(store, namespace=namespace, counter=counter, **keys)(
                    lambda m: state.__setitem__(m.entity, m.body)
                )
                ordered = versioned_message(store, namespace=f"{namespace}-in-order", **keys)(
                    lambda m: in_order.__setitem__(m.entity, m.body)
                )
                for m in messages:
                    shuffled(m)
                for m in in_order_single(messages):
                    ordered(m)
                expected_state, expected_counts = expected_after(messages)
                assert state == in_order == expected_state
                assert counts_of(counter) == expected_counts

            run()
        finally:
            store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
def test_store_mode_racing_deliveries_of_one_entity_apply_in_version_order(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Four consumers racing on the same entities never apply an older version after a newer
    one: each entity's applied versions strictly increase, and its newest is applied."""
    with fresh_store_url(backend, request, tmp_path) as url:
        stores = [open_store(url) for _ in range(4)]
        applied: dict[str, list[int]] = {"a": [], "b": []}
        lock = threading.Lock()

        def effect(m: Message) -> None:
            with lock:
                applied[m.entity].append(m.version)

        rng = random.Random(19)
        messages = [message(e, v) for e in "ab" for v in range(1, 41)] * 2
        rng.shuffle(messages)
        try:
            handlers = [
                versioned_message(
                    s, namespace="race", entity=entity_of, version=version_of, wait=30
                )(effect)
                for s in stores
            ]
            errors: list[BaseException] = []

            def consume(worker: int) -> None:
                try:
                    for m in messages[worker::4]:
                        handlers[worker](m)
                except BaseException as error:  # reported to the test thread below
                    errors.append(error)

            threads = [threading.Thread(target=consume, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not errors
            for versions in applied.values():
                assert versions == sorted(set(versions))
                assert versions[-1] == 40
        finally:
            for s in stores:
                s.close()


# --- transactional mode -----------------------------------------------------------------------


@dataclasses.dataclass
class Database:
    """One test's database: a connection factory, its placeholder and tables of its own."""

    kind: str
    connect: Callable[[], Any]
    versions: str
    state: str

    @property
    def mark(self) -> str:
        """The driver's placeholder."""
        return "?" if self.kind == "sqlite" else "%s"

    def create_state(self, connection: Any, table: str | None = None) -> None:
        """Create an entity-state table (the effect's rows) and commit."""
        connection.execute(
            f'CREATE TABLE IF NOT EXISTS "{table or self.state}" '
            "(entity TEXT PRIMARY KEY, body TEXT NOT NULL, writes INTEGER NOT NULL)"
        )
        connection.commit()

    def write(self, connection: Any, m: Message, table: str | None = None) -> None:
        """The effect: set the entity's state to the message's body, counting the writes."""
        connection.execute(
            f'INSERT INTO "{table or self.state}" (entity, body, writes) '
            f"VALUES ({self.mark}, {self.mark}, 1) ON CONFLICT (entity) DO UPDATE "
            "SET body = excluded.body, writes = "
            f'"{table or self.state}".writes + 1',
            (m.entity, m.body.decode()),
        )

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a query on a fresh connection; return its rows."""
        with contextlib.closing(self.connect()) as connection:
            return [tuple(row) for row in connection.execute(sql).fetchall()]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A SQLite file, or a real PostgreSQL server with tables of this test's own."""
    versions, state = unique_name("rs_versions"), unique_name("rs_state")
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        yield Database("sqlite", lambda: sqlite3.connect(path, timeout=30), versions, state)
        return
    import psycopg

    url = request.getfixturevalue("postgres_url")
    try:
        yield Database("postgres", lambda: psycopg.connect(url), versions, state)
    finally:
        drop_postgres_tables(url, versions, state, f"{state}_in_order", f"{state}_log")


def test_transactional_mode_skips_and_counts_older_and_equal_versions(
    database: Database,
) -> None:
    """The version's compare-and-set in the handler's transaction: newer versions write,
    older and equal ones (a duplicate included) are skipped, counted, and write nothing."""
    counter = VersionCounter()
    with contextlib.closing(database.connect()) as connection:
        database.create_state(connection)

        @versioned_message(
            connection,
            namespace="orders",
            entity=entity_of,
            version=version_of,
            counter=counter,
            table=database.versions,
        )
        def handle(m: Message) -> str:
            database.write(connection, m)
            return m.body.decode()

        assert handle(message("a", 2)) == "a@2"
        assert handle(message("a", 1)) is None
        assert handle(message("a", 2)) is None  # a duplicate is an equal version
        assert handle(message("a", 5)) == "a@5"
    assert database.rows(f'SELECT entity, body, writes FROM "{database.state}"') == [
        ("a", "a@5", 2)
    ]
    assert database.rows(f'SELECT namespace, entity, version FROM "{database.versions}"') == [
        ("orders", "a", 5)
    ]
    assert counts_of(counter) == {"applied": 2, "stale": 2, "replayed": 0}


def test_transactional_mode_rolls_back_the_version_with_a_failed_effect(
    database: Database,
) -> None:
    """A handler that raises rolls back its writes and the version: a redelivery applies."""
    with contextlib.closing(database.connect()) as connection:
        database.create_state(connection)
        fail = [True]

        @versioned_message(
            connection,
            namespace="orders",
            entity=entity_of,
            version=version_of,
            table=database.versions,
        )
        def handle(m: Message) -> None:
            database.write(connection, m)
            if fail.pop():
                raise ConnectionError("the downstream call failed after the write")

        with pytest.raises(ConnectionError):
            handle(message("a", 1))
        assert database.rows(f'SELECT * FROM "{database.state}"') == []
        fail.append(False)
        handle(message("a", 1))
    assert database.rows(f'SELECT body, writes FROM "{database.state}"') == [("a@1", 1)]


def test_transactional_mode_generated_deliveries_end_in_the_in_order_state(
    database: Database,
) -> None:
    """Thousands of generated deliveries, out of order and duplicated, over several entities:
    the committed state equals in-order single delivery's, each applied version written once."""
    with contextlib.closing(database.connect()) as connection:
        in_order_table = f"{database.state}_in_order"

        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture],
        )
        @given(deliveries)
        def run(messages: list[Message]) -> None:
            for table in (database.state, in_order_table):
                connection.execute(f'DROP TABLE IF EXISTS "{table}"')
                database.create_state(connection, table)
            counter = VersionCounter()
            namespace = unique_name("orders")
            keys: dict[str, Any] = {
                "entity": entity_of,
                "version": version_of,
                "table": database.versions,
            }
            shuffled = versioned_message(connection, namespace=namespace, counter=counter, **keys)(
                lambda m: database.write(connection, m)
            )
            ordered = versioned_message(connection, namespace=f"{namespace}-in-order", **keys)(
                lambda m: database.write(connection, m, in_order_table)
            )
            for m in messages:
                shuffled(m)
            for m in in_order_single(messages):
                ordered(m)
            expected_state, expected_counts = expected_after(messages)
            for table in (database.state, in_order_table):
                found = connection.execute(f'SELECT entity, body FROM "{table}"').fetchall()
                assert {e: b.encode() for e, b in found} == expected_state
            writes = connection.execute(f'SELECT sum(writes) FROM "{database.state}"').fetchone()
            assert writes[0] == expected_counts["applied"]
            connection.commit()
            assert counter.applied == expected_counts["applied"]
            assert counter.stale == expected_counts["stale"] + expected_counts["replayed"]

        run()


def test_transactional_mode_racing_connections_apply_in_version_order(
    database: Database,
) -> None:
    """Four consumers on four connections racing on two entities: the row lock orders them,
    so each entity ends at its newest version with each version written at most once."""
    with contextlib.closing(database.connect()) as setup:
        database.create_state(setup)
        setup.execute(f'CREATE TABLE "{database.state}_log" (entity TEXT, version INTEGER)')
        setup.commit()
    messages = [message(e, v) for e in "ab" for v in range(1, 31)] * 2
    random.Random(19).shuffle(messages)
    errors: list[BaseException] = []

    def consume(worker: int) -> None:
        with contextlib.closing(database.connect()) as connection:

            @versioned_message(
                connection,
                namespace="race",
                entity=entity_of,
                version=version_of,
                table=database.versions,
            )
            def handle(m: Message) -> None:
                database.write(connection, m)
                connection.execute(
                    f'INSERT INTO "{database.state}_log" VALUES ({database.mark}, {database.mark})',
                    (m.entity, m.version),
                )

            try:
                for m in messages[worker::4]:
                    handle(m)
            except BaseException as error:  # reported to the test thread below
                errors.append(error)

    threads = [threading.Thread(target=consume, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    log = database.rows(f'SELECT entity, version FROM "{database.state}_log"')
    for entity in "ab":
        versions = [v for e, v in log if e == entity]
        assert len(versions) == len(set(versions))  # no version applied twice
        assert max(versions) == 30
    assert sorted(database.rows(f'SELECT entity, body FROM "{database.state}"')) == [
        ("a", "a@30"),
        ("b", "b@30"),
    ]


# --- a SIGKILL between the effect and the commit ----------------------------------------------

CRASH_POINTS = ("after_effect", "after_commit")


def run_worker(args: list[str]) -> str | None:
    """Run the crash worker once; SIGKILL it when it reports a point; return the point."""
    command = [sys.executable, "-m", "tests.functions.test_versioned_consumers", *args]
    with subprocess.Popen(
        command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        watchdog = threading.Timer(WORKER_SECONDS, process.kill)
        watchdog.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("at:"):
                    os.kill(process.pid, signal.SIGKILL)
                    assert process.wait(10) == -signal.SIGKILL
                    return line[3:].strip()
            assert process.wait(10) == 0
            return None
        finally:
            watchdog.cancel()


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_between_effect_and_commit_leaves_both_or_neither(
    database: Database, point: str, request: pytest.FixtureRequest
) -> None:
    """A consumer killed with SIGKILL after its write and before the commit leaves neither the
    write nor the version; killed after the commit, both. A redelivery then applies it once."""
    dsn = str(Path(request.getfixturevalue("tmp_path")) / "app.db")
    if database.kind == "postgres":
        dsn = request.getfixturevalue("postgres_url")
    with contextlib.closing(database.connect()) as connection:
        database.create_state(connection)
    args = ["--kind", database.kind, "--dsn", dsn, "--versions", database.versions]
    args += ["--state", database.state, "--crash-at", point]
    assert run_worker(args) == point
    committed = point == "after_commit"
    state = database.rows(f'SELECT body, writes FROM "{database.state}"')
    assert state == ([("a@7", 1)] if committed else [])
    versions = database.rows(f'SELECT version FROM "{database.versions}"')
    assert versions == ([(7,)] if committed else [])

    assert run_worker([*args[:-2], "--crash-at", ""]) is None  # the broker redelivers
    assert database.rows(f'SELECT body, writes FROM "{database.state}"') == [("a@7", 1)]


def worker_main(argv: list[str]) -> None:
    """The crash worker: apply `a@7` once in transactional mode, stopping at `--crash-at`."""
    parser = argparse.ArgumentParser()
    for name in ("--kind", "--dsn", "--versions", "--state", "--crash-at"):
        parser.add_argument(name, required=True)
    args = parser.parse_args(argv)
    if args.kind == "sqlite":
        connect: Callable[[], Any] = lambda: sqlite3.connect(args.dsn, timeout=30)  # noqa: E731
    else:
        import psycopg

        connect = lambda: psycopg.connect(args.dsn)  # noqa: E731
    database = Database(args.kind, connect, args.versions, args.state)

    def at(point: str) -> None:
        if args.crash_at == point:
            print(f"at:{point}", flush=True)
            sys.stdin.readline()  # blocks until the test kills this process

    with contextlib.closing(connect()) as connection:

        @versioned_message(
            connection,
            namespace="orders",
            entity=entity_of,
            version=version_of,
            table=args.versions,
        )
        def handle(m: Message) -> None:
            database.write(connection, m)
            at("after_effect")

        handle(message("a", 7))
        at("after_commit")


# --- RabbitMQ, end to end ---------------------------------------------------------------------


def publish_versions(amqp_url: str, queue: str, seed: int) -> list[Message]:
    """Publish versions 1..20 of five entities, shuffled, a quarter of them twice."""
    rng = random.Random(seed)
    messages = [message(e, v) for e in "abcde" for v in range(1, 21)]
    messages += rng.sample(messages, len(messages) // 4)
    rng.shuffle(messages)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=False, auto_delete=False)
        channel.confirm_delivery()
        for m in messages:
            headers = {"entity": m.entity, "version": str(m.version)}
            properties = pika.BasicProperties(message_id=m.message_id, headers=headers)
            channel.basic_publish("", queue, m.body, properties)
    finally:
        connection.close()
    return messages


def consume_all(amqp_url: str, queue: str, handle: Callable[..., object], total: int) -> int:
    """Get and handle every message of `queue` (a handler error is nacked with requeue once);
    return how many deliveries there were."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    delivered = 0
    try:
        channel = connection.channel()
        for _ in range(total * 3):
            method, properties, body = channel.basic_get(queue)
            if method is None:
                break
            delivered += 1
            try:
                handle(channel, method, properties, body)
            except Exception as error:
                channel.basic_nack(method.delivery_tag, requeue=should_requeue(error))
            else:
                channel.basic_ack(method.delivery_tag)
        channel.queue_delete(queue)
    finally:
        connection.close()
    return delivered


@pytest.mark.rabbitmq
@pytest.mark.parametrize("mode", ["transaction", "store"])
def test_rabbitmq_out_of_order_duplicates_end_in_the_in_order_state(
    amqp_url: str, mode: str, tmp_path: Path
) -> None:
    """A real RabbitMQ queue fed shuffled versions with duplicates, consumed through pika by a
    versioned handler (on SQLite, in its transaction or with a SQLite store): the entities end
    at their newest versions, each skip counted."""
    queue = unique_name("rs_test_versions")
    messages = publish_versions(amqp_url, queue, seed=len(mode))
    counter = VersionCounter()
    path = tmp_path / "app.db"
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}") if mode == "store" else None
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE state (entity TEXT PRIMARY KEY, body TEXT, version INT)")
        connection.commit()

        @versioned_message(
            store if store is not None else connection,
            namespace="orders",
            entity=message_header("entity"),
            version=message_header("version"),
            counter=counter,
        )
        def on_message(channel: object, method: object, properties: object, body: bytes) -> None:
            entity, version = body.decode().split("@")
            connection.execute(
                "INSERT INTO state VALUES (?, ?, ?) ON CONFLICT (entity) DO UPDATE "
                "SET body = excluded.body, version = excluded.version",
                (entity, body.decode(), int(version)),
            )
            if store is not None:
                connection.commit()

        try:
            delivered = consume_all(amqp_url, queue, on_message, len(messages))
        finally:
            if store is not None:
                store.close()
        state = dict(connection.execute("SELECT entity, body FROM state").fetchall())
    assert delivered == len(messages)
    expected_state, expected = expected_after(messages)
    assert {e: b.encode() for e, b in state.items()} == expected_state
    assert counter.applied == expected["applied"]
    assert counter.skipped == expected["stale"] + expected["replayed"]


if __name__ == "__main__":
    worker_main(sys.argv[1:])
