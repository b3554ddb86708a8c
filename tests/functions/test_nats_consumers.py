"""NATS JetStream consumers: one effect per message id, through naks, ack_wait redeliveries,
duplicate publishes, concurrent deliveries and a SIGKILL, on a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from retrysafe import (
    AsyncStore,
    ConfigurationError,
    InvalidKeyError,
    KeyMismatchError,
    open_async_store,
)
from retrysafe.consumers import (
    idempotent_message,
    jetstream_message,
    message_body_of,
    message_id_of,
    should_requeue,
)
from retrysafe.observe import Observer, Operation, StoreCall
from tests.conftest import fresh_store_url, unique_name

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
BOUND = 30.0  # seconds any one service test may wait in all


class CardDeclinedError(Exception):
    """A definitive business failure: stored as the outcome, never retried."""


@pytest.fixture
def anyio_backend() -> str:
    """nats-py runs on asyncio."""
    return "asyncio"


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def async_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """A fresh async store on the real clock (leases expire for real here)."""
    with fresh_store_url(str(request.param), request, tmp_path) as url:
        store = open_async_store(url)
        try:
            yield store
        finally:
            await store.aclose()


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[JetStreamContext]:
    """A JetStream context on its own connection to the test NATS server."""
    connection = await nats.connect(nats_url)
    try:
        yield connection.jetstream()
    finally:
        await connection.close()


async def create_stream(
    js: JetStreamContext, name: str, duplicate_window: float, ack_wait: float
) -> None:
    """Create stream `name` on subjects `name.>`, with a durable pull consumer `charge`."""
    await js.add_stream(
        StreamConfig(
            name=name,
            subjects=[f"{name}.>"],
            storage=StorageType.MEMORY,
            duplicate_window=duplicate_window,  # 0: the server's default, 2 minutes
        )
    )
    config = ConsumerConfig(
        durable_name="charge", ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait, max_deliver=-1
    )
    await js.add_consumer(name, config)


@contextlib.asynccontextmanager
async def fresh_stream(
    js: JetStreamContext, *, duplicate_window: float = 0, ack_wait: float = 1.0
) -> AsyncIterator[str]:
    """Create a stream and a durable pull consumer `charge` of its own; delete them after."""
    name = unique_name("RS_TEST")
    try:
        await create_stream(js, name, duplicate_window, ack_wait)
        yield name
    finally:
        await js.delete_stream(name)


async def publish_after_window(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> int:
    """Publish until JetStream stores it, not dropping it as a duplicate; return its sequence."""
    deadline = time.monotonic() + 10
    while True:
        ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id})
        if not ack.duplicate:
            return ack.seq
        assert time.monotonic() < deadline, "the duplicate window never ended"
        await asyncio.sleep(0.05)  # still inside the window: JetStream dropped this publish


async def drain(
    subscription: JetStreamContext.PullSubscription, handle: Callable[[Msg], Awaitable[None]]
) -> list[int]:
    """Handle every delivery until none comes for 1.5 s (over the 1 s ack_wait, so an
    unsettled delivery would come back meanwhile); return each one's delivery count."""
    counts = []
    while True:
        try:
            messages = await subscription.fetch(10, timeout=1.5)
        except TimeoutError:  # nats.errors.TimeoutError, or asyncio's own
            return counts
        for msg in messages:
            counts.append(msg.metadata.num_delivered)
            await handle(msg)


async def nothing_pending(js: JetStreamContext, stream: str, consumer: str = "charge") -> bool:
    """Whether the consumer has settled every message (acks are processed asynchronously)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = await js.consumer_info(stream, consumer)
        if info.num_ack_pending == 0 and info.num_pending == 0:
            return True
        await asyncio.sleep(0.05)
    return False


def settlements(caplog: pytest.LogCaptureFixture, word: str) -> list[BaseException]:
    """The errors of the deliveries `jetstream_message` settled with `word` (a log line)."""
    return [
        record.exc_info[1]
        for record in caplog.records
        if record.name == "retrysafe.consumers" and word in record.getMessage() and record.exc_info
        if record.exc_info[1] is not None
    ]


def test_message_id_and_body_come_from_a_nats_message() -> None:
    """The default key is the Nats-Msg-Id header and the fingerprint the message's data."""
    msg = Msg(None, subject="orders", data=b'{"n": 1}', headers={"Nats-Msg-Id": "o-1"})
    assert message_id_of(msg) == "o-1"
    assert message_body_of(msg) == b'{"n": 1}'
    for headers in (None, {}, {"Nats-Msg-Id": ""}):
        anonymous = Msg(None, subject="orders", data=b"{}", headers=headers)
        with pytest.raises(InvalidKeyError, match=r"Nats-Msg-Id.*js\.publish") as refused:
            message_id_of(anonymous)
        assert not should_requeue(refused.value)


def test_missing_nats_extra_is_named() -> None:
    """Without nats-py, the package imports and jetstream_message names the extra to install."""
    code = (
        "import sys; sys.modules['nats'] = None\n"
        "import retrysafe, retrysafe.consumers as consumers\n"
        "try:\n"
        "    consumers.jetstream_message(retrysafe.open_async_store('memory://'))\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingExtraError")
    assert "pip install 'retrysafe[nats]'" in done.stdout


@pytest.mark.anyio
async def test_core_nats_message_is_refused() -> None:
    """A message that JetStream did not deliver cannot be acked: ConfigurationError, not run."""
    store = open_async_store("memory://")
    runs: list[bytes] = []

    @jetstream_message(store, namespace="orders.charge")
    async def charge(msg: Msg) -> None:
        runs.append(msg.data)

    core = Msg(None, subject="orders", data=b"{}", headers={"Nats-Msg-Id": "o-1"})
    with pytest.raises(ConfigurationError, match=r"js\.subscribe"):
        await charge(core)
    assert runs == []
    with pytest.raises(ConfigurationError, match="async handler"):
        jetstream_message(store)(lambda msg: None)
    with pytest.raises(ConfigurationError, match="ack_wait must be positive"):
        jetstream_message(store, ack_wait=0)
    await store.aclose()


@pytest.mark.nats
@pytest.mark.anyio
async def test_b26_redelivery_after_nak_and_ack_wait_replays(
    js: JetStreamContext, async_store: AsyncStore
) -> None:
    """A handled message nak'ed, then left unacked past ack_wait, replays: one effect."""
    effects: list[bytes] = []

    async def apply(msg: Msg) -> dict[str, int]:
        effects.append(msg.data)
        return {"receipt": len(effects)}

    charge = idempotent_message(async_store, namespace="orders.charge")(apply)
    settle = jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)(apply)
    with anyio.fail_after(BOUND):
        async with fresh_stream(js, ack_wait=1.0) as stream:
            await js.publish(f"{stream}.new", b'{"amount": 500}', headers={"Nats-Msg-Id": "o-1"})
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            [first] = await subscription.fetch(1, timeout=5)
            assert await charge(first) == {"receipt": 1}
            await first.nak()  # a later step failed: JetStream redelivers at once
            [second] = await subscription.fetch(1, timeout=5)
            assert second.metadata.num_delivered == 2
            assert await charge(second) == {"receipt": 1}  # replayed; never acked (a crash)
            [third] = await subscription.fetch(1, timeout=5)  # after ack_wait
            assert third.metadata.num_delivered == 3
            await settle(third)
            assert await drain(subscription, settle) == []  # acked: nothing comes back
            assert await nothing_pending(js, stream)
    assert effects == [b'{"amount": 500}']


@pytest.mark.nats
@pytest.mark.anyio
async def test_b26_duplicate_publish_after_the_dedup_window_has_one_effect(
    js: JetStreamContext, async_store: AsyncStore
) -> None:
    """JetStream stores a re-publish that comes after its duplicate window; it still replays."""
    effects: list[str] = []

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)
    async def charge(msg: Msg) -> None:
        effects.append(message_id_of(msg))

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, duplicate_window=0.1) as stream:
            subject = f"{stream}.new"
            first = await publish_after_window(js, subject, b'{"amount": 500}', "o-1")
            second = await publish_after_window(js, subject, b'{"amount": 500}', "o-1")
            assert second > first  # two messages in the stream: JetStream did not dedup
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            assert await drain(subscription, charge) == [1, 1]
            assert await nothing_pending(js, stream)
    assert effects == ["o-1"]


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("async_store", ["memory"], indirect=True)
async def test_b26_push_subscription_callback_naks_then_acks_once(
    js: JetStreamContext, async_store: AsyncStore
) -> None:
    """As a push subscription's callback: nak'ed after a transient error, run again, acked;
    a re-publish after the dedup window replays."""
    attempts: list[int] = []
    effects: list[int] = []

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0, nak_delay=0)
    async def charge(msg: Msg) -> None:
        attempts.append(msg.metadata.num_delivered)
        if len(attempts) == 1:
            raise ConnectionError("the provider timed out")  # before the effect
        effects.append(msg.metadata.sequence.stream)

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, duplicate_window=0.1) as stream:
            config = ConsumerConfig(ack_wait=1.0, max_deliver=-1)
            subscription = await js.subscribe(
                f"{stream}.new", durable="push", cb=charge, manual_ack=True, config=config
            )
            try:
                for _ in range(2):
                    await publish_after_window(js, f"{stream}.new", b"{}", "o-1")
                assert await nothing_pending(js, stream, "push")
            finally:
                await subscription.unsubscribe()
    assert len(attempts) == 2  # the failed one and its rerun; the other delivery replayed
    assert len(effects) == 1


class ClaimWatcher(Observer):
    """Sets `claimed` when a claim is made once `armed` is set: the duplicate's claim."""

    def __init__(self, armed: asyncio.Event) -> None:
        self.armed, self.claimed = armed, asyncio.Event()

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        if call.name == "claim" and self.armed.is_set():
            self.claimed.set()


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("async_store", ["sqlite", "redis", "postgres"], indirect=True)
@pytest.mark.parametrize("wait", [10.0, 0.0], ids=["wait", "refuse"])
async def test_b14_b15_concurrent_deliveries_to_two_subscribers_run_once(
    nats_url: str,
    js: JetStreamContext,
    async_store: AsyncStore,
    wait: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A message redelivered to a second subscriber while the first still runs it: the
    duplicate waits and replays (or, with wait=0, is nak'ed until then); one effect."""
    caplog.set_level(logging.WARNING, "retrysafe.consumers")
    entered, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []
    watcher = ClaimWatcher(entered)

    async def apply(msg: Msg) -> str:
        runs.append(msg.metadata.num_delivered)
        entered.set()
        await release.wait()
        return "charged"

    # Two workers (two decorations, two connections); their in-progress acks (every 20 s)
    # are too rare for the consumer's 1 s ack_wait: a paused process, a slow network.
    first_worker = jetstream_message(async_store, namespace="orders.charge", ack_wait=60)(apply)
    second_worker = jetstream_message(
        async_store, namespace="orders.charge", ack_wait=60, wait=wait, observers=[watcher]
    )(apply)
    other = await nats.connect(nats_url)
    try:
        with anyio.fail_after(BOUND):
            async with fresh_stream(js, ack_wait=1.0) as stream:
                await js.publish(f"{stream}.new", b"{}", headers={"Nats-Msg-Id": "o-1"})
                one = await js.pull_subscribe_bind(durable="charge", stream=stream)
                two = await other.jetstream().pull_subscribe_bind(durable="charge", stream=stream)
                [delivery] = await one.fetch(1, timeout=5)
                running = asyncio.create_task(first_worker(delivery))
                await entered.wait()
                [duplicate] = await two.fetch(1, timeout=5)  # once ack_wait ran out
                assert duplicate.metadata.num_delivered == 2
                waiting = asyncio.create_task(second_worker(duplicate))
                await watcher.claimed.wait()  # the duplicate found the first one in flight
                if not wait:
                    await waiting  # refused at once, nak'ed for later
                release.set()
                await asyncio.gather(running, waiting)
                await drain(two, second_worker)
                assert await nothing_pending(js, stream)
    finally:
        await other.close()
    assert runs == [1]
    refused = settlements(caplog, "nak'ed")
    assert [type(error).__name__ for error in refused] == ([] if wait else ["InFlightError"])


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("async_store", ["sqlite"], indirect=True)
async def test_b16_in_progress_acks_hold_off_redelivery_while_the_handler_runs(
    nats_url: str, js: JetStreamContext, async_store: AsyncStore
) -> None:
    """A handler running for 3 times the consumer's ack_wait is not redelivered meanwhile."""
    entered, release = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)
    async def charge(msg: Msg) -> None:
        runs.append(msg.metadata.num_delivered)
        entered.set()
        await release.wait()

    other = await nats.connect(nats_url)
    try:
        with anyio.fail_after(BOUND):
            async with fresh_stream(js, ack_wait=1.0) as stream:
                await js.publish(f"{stream}.new", b"{}", headers={"Nats-Msg-Id": "o-1"})
                one = await js.pull_subscribe_bind(durable="charge", stream=stream)
                two = await other.jetstream().pull_subscribe_bind(durable="charge", stream=stream)
                [delivery] = await one.fetch(1, timeout=5)
                running = asyncio.create_task(charge(delivery))
                await entered.wait()
                with pytest.raises(TimeoutError):
                    await two.fetch(1, timeout=3)  # no redelivery while it runs
                release.set()
                await running
                assert await nothing_pending(js, stream)
                info = await js.consumer_info(stream, "charge")
    finally:
        await other.close()
    assert runs == [1]
    assert info.num_redelivered == 0


@pytest.mark.nats
@pytest.mark.anyio
@pytest.mark.parametrize("async_store", ["memory", "redis"], indirect=True)
async def test_b26_message_without_id_is_terminated_and_a_key_function_works(
    js: JetStreamContext, async_store: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    """No Nats-Msg-Id: terminated, not run, not redelivered; a key function keys on a header."""
    caplog.set_level(logging.WARNING, "retrysafe.consumers")
    runs: list[str] = []

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)
    async def charge(msg: Msg) -> None:
        runs.append("charge")

    @jetstream_message(
        async_store,
        namespace="orders.ship",
        ack_wait=1.0,
        message_id=lambda msg: msg.headers["Order-Id"],
    )
    async def ship(msg: Msg) -> None:
        runs.append(f"ship {msg.headers['Order-Id']}")

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, ack_wait=1.0) as stream:
            await js.publish(f"{stream}.charge", b"{}")
            for _ in range(2):  # no Nats-Msg-Id: JetStream stores both
                await js.publish(f"{stream}.ship", b"{}", headers={"Order-Id": "o-7"})
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)

            async def route(msg: Msg) -> None:
                await (charge if msg.subject.endswith(".charge") else ship)(msg)

            assert await drain(subscription, route) == [1, 1, 1]  # nothing redelivered
            assert await nothing_pending(js, stream)
    assert runs == ["ship o-7"]
    [terminated] = settlements(caplog, "terminated")
    assert isinstance(terminated, InvalidKeyError)
    assert 'headers={"Nats-Msg-Id": ' in str(terminated)


@pytest.mark.nats
@pytest.mark.anyio
async def test_b13_b28_permanent_errors_are_terminated_and_transient_ones_nakked(
    js: JetStreamContext, async_store: AsyncStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A transient error is nak'ed and runs again; a reused id with another body and a final
    exception (alone, or in a group of final ones) are terminated, never redelivered."""
    caplog.set_level(logging.WARNING, "retrysafe.consumers")
    effects: list[str] = []
    attempts: list[str] = []

    @jetstream_message(
        async_store,
        namespace="orders.charge",
        ack_wait=1.0,
        nak_delay=0,
        final_exceptions=(CardDeclinedError,),
    )
    async def charge(msg: Msg) -> None:
        order = json.loads(msg.data)
        attempts.append(order["id"])
        if order["id"] == "o-1" and attempts.count("o-1") == 1:
            raise ConnectionError("the provider timed out")  # before the effect
        if order["id"] == "o-3":
            raise CardDeclinedError(order["id"])
        if order["id"] == "o-4":  # as a TaskGroup wraps what its tasks raise: final all the same
            raise ExceptionGroup("charges", [CardDeclinedError(order["id"])])
        effects.append(f"{order['id']} {order['amount']}")

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, duplicate_window=0.1, ack_wait=1.0) as stream:
            subject = f"{stream}.new"
            orders = [("o-1", 100), ("o-2", 200), ("o-3", 300), ("o-4", 400), ("o-2", 999)]
            for order_id, amount in orders:
                body = json.dumps({"id": order_id, "amount": amount}).encode()
                await publish_after_window(js, subject, body, order_id)
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            assert sorted(await drain(subscription, charge)) == [1, 1, 1, 1, 1, 2]
            assert await nothing_pending(js, stream)
    assert sorted(effects) == ["o-1 100", "o-2 200"]
    assert sorted(attempts) == ["o-1", "o-1", "o-2", "o-3", "o-4"]  # the reused id never ran
    nakked = settlements(caplog, "nak'ed")
    assert [type(error) for error in nakked] == [ConnectionError]
    terminated = sorted(settlements(caplog, "terminated"), key=lambda error: type(error).__name__)
    assert [type(error) for error in terminated] == [
        CardDeclinedError,
        ExceptionGroup,
        KeyMismatchError,
    ]


def rows(effects: Path, sql: str) -> list[tuple[Any, ...]]:
    """Return the rows of a query on the effects database."""
    db = sqlite3.connect(effects)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def publish_orders(js: JetStreamContext, subject: str) -> tuple[set[str], set[str]]:
    """Publish 40 orders, then 8 of them again after the duplicate window; return the
    distinct ids and those whose first attempt fails."""
    fail_once = {f"m-{n:02d}" for n in range(0, 40, 9)}
    for message_id in [*(f"m-{n:02d}" for n in range(40)), *(f"m-{n:02d}" for n in range(8))]:
        body = json.dumps({"n": int(message_id[2:]), "fail_once": message_id in fail_once})
        await publish_after_window(js, subject, body.encode(), message_id)
    return {f"m-{n:02d}" for n in range(40)}, fail_once


async def on_jetstream(nats_url: str, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """Run `work` on a JetStream context of a connection of its own."""
    connection = await nats.connect(nats_url)
    try:
        return await work(connection.jetstream())
    finally:
        await connection.close()


def run_consumer(command: list[str], stall_at: int, ready: Path) -> None:
    """Run a consumer until it is inside the `stall_at`-th handler, then SIGKILL it there."""
    process = subprocess.Popen(
        [*command, "--stall-at", str(stall_at), "--ready", str(ready)], cwd=ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert process.poll() is None, "the consumer died before the stall point"
            assert time.monotonic() < deadline, "the consumer never reached the stall point"
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.mark.nats
@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_b16_b26_nats_consumer_killed_mid_handler_has_each_effect_once(
    nats_url: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """48 publishes (8 re-published after the dedup window), naks, and a consumer SIGKILLed
    inside a handler: its messages go to a new process, and every effect happens once."""
    effects, ready = tmp_path / "effects.db", tmp_path / "ready"
    stream = unique_name("RS_TEST")
    with fresh_store_url(backend, request, tmp_path) as store:
        asyncio.run(on_jetstream(nats_url, lambda js: create_stream(js, stream, 0.1, 2.0)))
        try:
            distinct, fail_once = asyncio.run(
                on_jetstream(nats_url, lambda js: publish_orders(js, f"{stream}.new"))
            )
            command = [
                *(sys.executable, "-m", "tests.functions.nats_consumer_app"),
                *("--nats", nats_url, "--stream", stream, "--durable", "charge"),
                *("--store", store, "--effects", str(effects), "--ack-wait", "2"),
            ]
            run_consumer(command, 15, ready)
            stalled = ready.read_text()
            done_before = {row[0] for row in rows(effects, "SELECT message_id FROM effects")}
            assert 0 < len(done_before) < len(distinct)
            assert stalled not in done_before

            second = subprocess.run(
                [*command, "--idle", "1", "--expect", str(len(distinct))],
                cwd=ROOT,
                timeout=120,
                check=False,
            )
            assert second.returncode == 0
            info = asyncio.run(
                on_jetstream(nats_url, lambda js: js.consumer_info(stream, "charge"))
            )
        finally:
            asyncio.run(on_jetstream(nats_url, lambda js: js.delete_stream(stream)))

    counts = dict(rows(effects, "SELECT message_id, count FROM effects"))
    assert set(counts) == distinct
    assert set(counts.values()) == {1}
    attempts = {row[0] for row in rows(effects, "SELECT message_id FROM attempts")}
    assert attempts == fail_once  # each was nak'ed once, then ran once
    stats = dict(rows(effects, "SELECT name, value FROM counts"))
    assert stats["redelivered"] > 0  # the killed consumer's unacknowledged messages
    assert stats["deliveries"] > stats["executions"]  # re-publishes replayed
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
