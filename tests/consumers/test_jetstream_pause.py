"""A JetStream consumer process paused past `ack_wait` (SIGSTOP: a GC pause, a blocked event
loop, a VM stall) while its handler runs: JetStream redelivers the message to another process,
and that delivery must find the message id still held, wait, and replay, not run the effect a
second time. Real processes, a real JetStream and PostgreSQL store; ordered by events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from tests.conftest import fresh_store_url, unique_name

ROOT = Path(__file__).resolve().parents[2]
ACK_WAIT = 4.0


def lines(events: Path) -> list[list[str]]:
    """The events so far, each `[event, pid, detail]`."""
    if not events.exists():
        return []
    return [line.split() for line in events.read_text().splitlines() if line]


def wait_for(what: str, found: Callable[[], object], seconds: float) -> object:
    """Poll `found` until it returns something truthy; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (value := found()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


async def on_jetstream(url: str, stream: str, action: str, max_deliver: int = -1) -> object:
    """Create the stream and its consumer, publish the order, read the consumer, or delete."""
    connection = await nats.connect(url)
    try:
        js = connection.jetstream()
        if action == "create":
            await js.add_stream(
                StreamConfig(name=stream, subjects=[f"{stream}.>"], storage=StorageType.MEMORY)
            )
            config = ConsumerConfig(
                durable_name="charge",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_deliver=max_deliver,
            )
            await js.add_consumer(stream, config)
        elif action == "publish":
            await js.publish(f"{stream}.new", b'{"order": 1}', headers={"Nats-Msg-Id": "o-1"})
        elif action == "info":
            return await js.consumer_info(stream, "charge")
        else:
            await js.delete_stream(stream)
    finally:
        await connection.close()
    return None


@contextlib.contextmanager
def workers(command: list[str], count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Start `count` consumer processes; SIGCONT and kill them at the end, whatever happened."""
    processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait(10)


def test_b16_default_lease_outlasts_a_redelivery_by_a_margin() -> None:
    """The lease that `jetstream_message` picks outlasts JetStream's redelivery of a paused
    delivery: at least two ack_waits remain when a pause begins (renewals every third)."""
    from retrysafe.consumers._nats import default_lease

    assert default_lease(30.0) == 90.0
    assert default_lease(ACK_WAIT) * 2 / 3 >= 2 * ACK_WAIT


@pytest.mark.nats
def test_b16_a_consumer_paused_past_ack_wait_does_not_run_the_effect_twice(
    nats_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two consumer processes; the one running the handler is SIGSTOPped until JetStream has
    redelivered the message to the other, and a while after. The effect happens once: the
    redelivery waits for the id, and replays once the paused process resumes and finishes."""
    events, stream = tmp_path / "events", unique_name("RS_PAUSE")
    with fresh_store_url("postgres", request, tmp_path) as store:
        asyncio.run(on_jetstream(nats_url, stream, "create"))
        command = [
            *(sys.executable, "-m", "tests.consumers.pause_app", "--nats", nats_url),
            *("--stream", stream, "--durable", "charge", "--store", store),
            *("--ack-wait", str(ACK_WAIT), "--events", str(events)),
        ]
        try:
            with workers(command, 2):
                wait_for("two ready consumers", lambda: len(lines(events)) >= 2, 30)
                asyncio.run(on_jetstream(nats_url, stream, "publish"))
                started = wait_for(
                    "the handler to start",
                    lambda: [e for e in lines(events) if e[0] == "start"],
                    10,
                )
                runner = int(started[0][1])  # type: ignore[index]
                os.kill(runner, signal.SIGSTOP)
                paused = time.monotonic()
                wait_for(
                    "JetStream to redeliver to the other consumer",
                    lambda: [e for e in lines(events) if e[0] == "fetched" and e[2] != "1"],
                    2 * ACK_WAIT,
                )
                # Long enough for the other consumer to take the id over, were its lease ended.
                with contextlib.suppress(AssertionError):
                    wait_for(
                        "a second start",
                        lambda: [e for e in lines(events) if e[0] == "start"][1:],
                        2.0,
                    )
                assert time.monotonic() - paused < 2 * ACK_WAIT  # within the covered pause
                os.kill(runner, signal.SIGCONT)

                def settled() -> bool:
                    info = asyncio.run(on_jetstream(nats_url, stream, "info"))
                    done = [e for e in lines(events) if e[0] == "effect"]
                    return bool(done) and info.num_ack_pending == 0 and info.num_pending == 0  # type: ignore[attr-defined]

                wait_for("every delivery to be settled", settled, 30)
                wait_for(
                    "every handler that started to finish",
                    lambda: (
                        len([e for e in lines(events) if e[0] == "effect"])
                        >= len([e for e in lines(events) if e[0] == "start"])
                    ),
                    10,
                )
        finally:
            asyncio.run(on_jetstream(nats_url, stream, "delete"))

    starts = [e for e in lines(events) if e[0] == "start"]
    effects = [e for e in lines(events) if e[0] == "effect"]
    assert [int(e[1]) for e in effects] == [runner], lines(events)
    assert len(starts) == 1, lines(events)


@pytest.mark.nats
def test_b16_a_dead_consumers_message_runs_once_within_a_small_max_deliver(
    nats_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A consumer SIGKILLed inside its handler leaves the message id in flight for the lease
    (three ack_waits). A new process's deliveries meanwhile find it in flight and are nak'ed
    until the lease ends, not every second: with max_deliver 3, the message is not dropped,
    and runs once, after the lease."""
    events, stream = tmp_path / "events", unique_name("RS_DEAD")
    with fresh_store_url("postgres", request, tmp_path) as store:
        asyncio.run(on_jetstream(nats_url, stream, "create", max_deliver=3))
        command = [
            *(sys.executable, "-m", "tests.consumers.pause_app", "--nats", nats_url),
            *("--stream", stream, "--durable", "charge", "--store", store),
            *("--ack-wait", str(ACK_WAIT), "--wait", "1", "--events", str(events)),
        ]
        try:
            with workers([*command, "--die"], 1) as (dying,):
                wait_for("a ready consumer", lambda: lines(events), 30)
                asyncio.run(on_jetstream(nats_url, stream, "publish"))
                assert dying.wait(10) == -signal.SIGKILL
            with workers(command, 1):

                def settled() -> bool:
                    info = asyncio.run(on_jetstream(nats_url, stream, "info"))
                    return info.num_ack_pending == 0 and info.num_pending == 0  # type: ignore[attr-defined]

                wait_for("the message to be settled", settled, 8 * ACK_WAIT)
                wait_for("its effect", lambda: [e for e in lines(events) if e[0] == "effect"], 5)
        finally:
            asyncio.run(on_jetstream(nats_url, stream, "delete"))

    starts = [e for e in lines(events) if e[0] == "start"]
    fetched = [int(e[2]) for e in lines(events) if e[0] == "fetched"]
    assert len(starts) == 2, lines(events)  # the dying one, and the one after the lease
    assert len([e for e in lines(events) if e[0] == "effect"]) == 1, lines(events)
    assert max(fetched) <= 3, lines(events)
