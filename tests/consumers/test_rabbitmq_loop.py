"""The RabbitMQ consume loops of docs/functions.md, run as written against a real RabbitMQ.

RabbitMQ redelivers a requeued message at once, so a loop that requeues every failure spins: a
body that is not JSON was redelivered over a thousand times in 3 seconds, and a store outage
made thousands of rejects a second. The documented loops dead-letter what no redelivery can
fix (a body that does not decode: a final exception) and wait `requeue_delay(error)` before
requeueing the rest, as JetStream's `nak_delay` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pika
import pytest

from retrysafe import InFlightError, InvalidKeyError
from tests.conftest import fresh_store_url, unique_name

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 3.0
DOWN = "postgresql://postgres@127.0.0.1:1/test"  # nothing listens on port 1: a store outage
BODIES = {"poison": b"\x00not json", "outage": json.dumps({"id": "o-1", "amount": 5}).encode()}


def documented_loops() -> list[str]:
    """The Python blocks of the queue-consumer section: aio-pika's, then pika's."""
    page = (ROOT / "docs" / "functions.md").read_text()
    section = page.split("## Queue consumers", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```", section, re.M | re.S)[:2]


def load(source: str, store_url: str, stop: str) -> dict[str, Any]:
    """Run a documented block's definitions, up to the line starting with `stop`, on a test
    store; count the calls of its `charge`."""
    source = source.split(f"\n{stop}", 1)[0]
    source = re.sub(r'open_(async_)?store\("[^"]*"\)', rf'open_\1store("{store_url}")', source)
    namespace: dict[str, Any] = {"__name__": "documented_loop"}
    exec(compile(source, "docs/functions.md", "exec"), namespace)  # noqa: S102 - our own docs
    charge, calls = namespace["charge"], []
    if asyncio.iscoroutinefunction(charge):

        async def counted_async(*args: Any) -> Any:
            calls.append(time.monotonic())
            return await charge(*args)

        namespace["charge"] = counted_async
    else:

        def counted(*args: Any) -> Any:
            calls.append(time.monotonic())
            return charge(*args)

        namespace["charge"] = counted
    namespace["calls"] = calls
    return namespace


@contextlib.contextmanager
def store_for(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A working store for the poison message, one that is down for the outage."""
    if case == "outage":
        yield DOWN
        return
    with fresh_store_url("postgres", request, tmp_path) as url:
        yield url


def dead_lettered(amqp_url: str, queue: str) -> int:
    """How many messages reached the dead-letter queue."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def check(calls: list[float], case: str, dead: int) -> None:
    """One delivery, dead-lettered, for the poison; requeues a second apart for the outage."""
    if case == "poison":
        assert (len(calls), dead) == (1, 1)
    else:
        assert 2 <= len(calls) <= SECONDS + 2, len(calls)
        gaps = [later - earlier for earlier, later in itertools.pairwise(calls)]
        assert min(gaps) >= 0.9, gaps
        assert dead == 0


@pytest.mark.parametrize("case", ["poison", "outage"])
def test_b15_documented_aio_pika_loop_neither_spins_nor_requeues_forever(
    amqp_url: str, case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """docs/functions.md's aio-pika `consume`, fed one message for 3 seconds."""
    name = unique_name("rs_loop")
    with store_for(case, request, tmp_path) as store_url:
        loop = load(documented_loops()[0], store_url, "async def main()")

        async def run() -> None:
            async with await aio_pika.connect(amqp_url) as connection:
                channel = await connection.channel()
                dead = await channel.declare_queue(f"{name}.dead", auto_delete=True)
                queue = await channel.declare_queue(
                    name,
                    exclusive=True,
                    arguments={
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": dead.name,
                    },
                )
                message = aio_pika.Message(BODIES[case], message_id="o-1")
                await channel.default_exchange.publish(message, routing_key=name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(loop["consume"](queue), SECONDS)
                check(loop["calls"], case, dead_lettered(amqp_url, dead.name))
                await loop["store"].aclose()

        asyncio.run(run())


@pytest.mark.parametrize("case", ["poison", "outage"])
def test_b15_documented_pika_callback_neither_spins_nor_requeues_forever(
    amqp_url: str, case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """docs/functions.md's pika `on_message`, fed one message for 3 seconds."""
    name = unique_name("rs_loop")
    with store_for(case, request, tmp_path) as store_url:
        loop = load(documented_loops()[1], store_url, "connection = pika.BlockingConnection")
        connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            channel.queue_declare(f"{name}.dead", auto_delete=True)
            arguments = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{name}.dead"}
            channel.queue_declare(name, exclusive=True, arguments=arguments)
            properties = pika.BasicProperties(message_id="o-1")
            channel.basic_publish("", name, BODIES[case], properties)
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                method, properties, body = channel.basic_get(name)
                if method is None:
                    connection.sleep(0.05)
                else:
                    loop["on_message"](channel, method, properties, body)
            check(loop["calls"], case, dead_lettered(amqp_url, f"{name}.dead"))
        finally:
            connection.close()
            loop["store"].close()


def test_b15_requeue_delay_waits_for_what_a_redelivery_can_fix() -> None:
    """Nothing to wait for before a dead letter; a duplicate in flight's `retry_after`; the
    default (1 s, or the one given) for anything else."""
    from retrysafe.consumers import requeue_delay

    assert requeue_delay(InvalidKeyError("no id")) == 0
    assert requeue_delay(InFlightError("busy", retry_after=2.5)) == 2.5
    assert requeue_delay(ConnectionError()) == 1.0
    assert requeue_delay(ConnectionError(), default=5) == 5
    assert functools.partial(requeue_delay, default=0)(TimeoutError()) == 0
