"""Queue consumers: one effect per message, through redeliveries, duplicates and a SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest

from retrysafe import (
    InFlightError,
    InvalidKeyError,
    KeyMismatchError,
    OutcomeError,
    StoreUnavailableError,
    open_store,
)
from retrysafe.consumers import idempotent_message, message_body_of, message_id_of, should_requeue
from tests.conftest import unique_name
from tests.functions.conftest import drop_backend_data

ROOT = Path(__file__).resolve().parents[2]


def test_message_id_and_body_come_from_aio_pika_and_pika_messages() -> None:
    """The default key and fingerprint read an aio-pika message or pika's callback arguments."""
    message = aio_pika.Message(b'{"n": 1}', message_id="m-1")
    assert message_id_of(message) == "m-1"
    assert message_body_of(message) == b'{"n": 1}'
    properties = pika.BasicProperties(message_id="m-2")
    assert message_id_of(None, None, properties, b"body") == "m-2"
    assert message_body_of(None, None, properties, b"body") == b"body"
    with pytest.raises(InvalidKeyError):
        message_id_of(aio_pika.Message(b"no id"))


def test_b26_redelivered_message_replays_and_reused_id_is_refused() -> None:
    """A second delivery of one message replays; the same id with another body is refused."""
    store = open_store("memory://")
    effects: list[str] = []

    @idempotent_message(store)
    def on_message(channel: object, method: object, properties: object, body: bytes) -> str:
        effects.append(body.decode())
        return body.decode().upper()

    properties = pika.BasicProperties(message_id="m-1")
    for _ in range(3):
        assert on_message(None, None, properties, b"charge") == "CHARGE"
    with pytest.raises(KeyMismatchError):
        on_message(None, None, properties, b"refund")
    assert effects == ["charge"]


def test_should_requeue_only_what_a_redelivery_can_fix() -> None:
    """Transient failures are requeued; a missing or reused id or a bad outcome is not."""
    assert should_requeue(ConnectionError())
    assert should_requeue(InFlightError("busy"))
    assert should_requeue(StoreUnavailableError("down"))
    assert not should_requeue(InvalidKeyError("no id"))
    assert not should_requeue(KeyMismatchError("reused"))
    assert not should_requeue(OutcomeError("not serializable"))


class CardDeclinedError(Exception):
    """A final answer of the handler: stored, and raised again on every redelivery."""


def test_b28_should_requeue_not_a_final_exception_stored_as_the_outcome() -> None:
    """A handler's final exception is its stored outcome: every redelivery raises it again, so
    requeueing it would loop for ever (the broker redelivering at once). Raised first or
    replayed, it is not requeued; the same type not listed as final, or raised outside a
    handler, is."""
    store = open_store("memory://")
    runs: list[bytes] = []

    @idempotent_message(store, final_exceptions=(CardDeclinedError,))
    def charge(channel: object, method: object, properties: object, body: bytes) -> None:
        runs.append(body)
        raise CardDeclinedError("do_not_honor")

    properties = pika.BasicProperties(message_id="m-1")
    for _ in range(2):  # the first delivery, then a redelivery that replays it
        with pytest.raises(CardDeclinedError) as declined:
            charge(None, None, properties, b"charge")
        assert not should_requeue(declined.value)
    assert runs == [b"charge"]
    assert should_requeue(CardDeclinedError("raised elsewhere"))

    @idempotent_message(store, namespace="not-final")
    def refund(channel: object, method: object, properties: object, body: bytes) -> None:
        raise CardDeclinedError("transient here")

    with pytest.raises(CardDeclinedError) as released:
        refund(None, None, properties, b"refund")
    assert should_requeue(released.value)


@contextlib.contextmanager
def durable_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Yield a store URL that outlives a process: SQLite, PostgreSQL, MySQL or Redis."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    if backend in ("postgres", "mysql"):
        url = f"{request.getfixturevalue(f'{backend}_url')}?table={unique_name()}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix={unique_name()}"
    try:
        yield url
    finally:
        drop_backend_data(url)


def publish(amqp_url: str, queue: str, seed: int) -> tuple[set[str], set[str]]:
    """Publish 200 messages, 20% of them duplicates; return the distinct and fail-once ids."""
    rng = random.Random(seed)
    order = [f"m-{n:03d}" for n in range(160)]
    for _ in range(40):  # a duplicate publish lands somewhere after its original
        original = rng.randrange(160)
        position = order.index(f"m-{original:03d}")
        order.insert(rng.randint(position + 1, len(order)), f"m-{original:03d}")
    fail_once = {f"m-{n:03d}" for n in range(0, 160, 23)}
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=False, auto_delete=False)
        channel.confirm_delivery()
        for message_id in order:
            body = json.dumps({"n": int(message_id[2:]), "fail_once": message_id in fail_once})
            channel.basic_publish(
                "", queue, body.encode(), pika.BasicProperties(message_id=message_id)
            )
    finally:
        connection.close()
    assert len(order) == 200
    return set(order), fail_once


def queue_depth_and_delete(amqp_url: str, queue: str, *, delete: bool) -> int:
    """Return how many messages wait in `queue`, deleting it if asked."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        depth = int(channel.queue_declare(queue, passive=True).method.message_count)
        if delete:
            channel.queue_delete(queue)
        return depth
    finally:
        connection.close()


def consumer(amqp_url: str, queue: str, store: str, effects: Path, *extra: str) -> list[str]:
    """Return the command line of one consumer process."""
    return [
        sys.executable,
        "-m",
        "tests.functions.consumer_app",
        *("--amqp", amqp_url, "--queue", queue, "--store", store, "--effects", str(effects)),
        *extra,
    ]


def rows(effects: Path, sql: str) -> list[tuple[Any, ...]]:
    """Return the rows of a query on the effects database."""
    db = sqlite3.connect(effects)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql", "redis"])
def test_b26_rabbitmq_consumer_killed_mid_run_has_each_effect_once(
    amqp_url: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """200 publishes with 40 duplicates, nacks and a SIGKILL mid-message: one effect each."""
    queue = unique_name("rs_test_queue")
    effects, ready = tmp_path / "effects.db", tmp_path / "ready"
    with durable_store(backend, request, tmp_path) as store:
        try:
            distinct, fail_once = publish(amqp_url, queue, seed=len(backend))
            command = consumer(amqp_url, queue, store, effects)
            first = subprocess.Popen(
                [*command, "--stall-at", "60", "--ready", str(ready)], cwd=ROOT
            )
            try:
                deadline = time.monotonic() + 60
                while not ready.exists():
                    assert first.poll() is None, "the consumer died before the stall point"
                    assert time.monotonic() < deadline, "the consumer never reached message 60"
                    time.sleep(0.05)
            finally:
                os.kill(first.pid, signal.SIGKILL)
                first.wait(10)
            stalled = ready.read_text()
            done_before = {row[0] for row in rows(effects, "SELECT message_id FROM effects")}
            assert 0 < len(done_before) < len(distinct)
            assert stalled not in done_before

            second = subprocess.run(
                [*command, "--idle", "0.5", "--expect", str(len(distinct))],
                cwd=ROOT,
                timeout=120,
                check=False,
            )
            assert second.returncode == 0

            counts = dict(rows(effects, "SELECT message_id, count FROM effects"))
            assert set(counts) == distinct
            assert set(counts.values()) == {1}
            attempts = {row[0] for row in rows(effects, "SELECT message_id FROM attempts")}
            assert attempts == fail_once  # each was nacked with requeue once, then ran once
            stats = dict(rows(effects, "SELECT name, value FROM counts"))
            assert stats["redelivered"] > 0  # the killed consumer's unacknowledged messages
            replays = stats["deliveries"] - stats["executions"] - stats["rejected"]
            assert replays > 0  # duplicates and redeliveries of finished messages
        finally:
            depth = queue_depth_and_delete(amqp_url, queue, delete=True)
    assert depth == 0
