"""NATS JetStream handlers that settle their own delivery: a `nak` asks for it again, so the
redelivery runs the handler; an `ack` or a `term` of its own keeps its outcome stored (B28)."""

from __future__ import annotations

import asyncio
import json

import anyio
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from retrysafe import AsyncStore
from retrysafe.consumers import jetstream_message
from tests.functions.test_nats_consumers import (
    BOUND,
    async_store,  # noqa: F401 - a fixture, found here by pytest
    drain,
    fresh_stream,
    js,  # noqa: F401 - a fixture, found here by pytest
    nothing_pending,
    publish_after_window,
)

pytestmark = [pytest.mark.nats, pytest.mark.anyio]


async def test_b28_a_handler_that_naks_its_own_delivery_runs_again_on_the_redelivery(
    js: JetStreamContext,  # noqa: F811 - the fixture imported above
    async_store: AsyncStore,  # noqa: F811 - the fixture imported above
) -> None:
    """A handler that naks its delivery ('not now') and returns releases the message id, even
    with every exception final: the redelivery runs it and is acked; the effect happens once."""
    runs: list[int] = []
    effects: list[str] = []

    @jetstream_message(
        async_store, namespace="orders.charge", ack_wait=1.0, final_exceptions=(Exception,)
    )
    async def charge(msg: Msg) -> str:
        runs.append(msg.metadata.num_delivered)
        if len(runs) == 1:  # a dependency is not ready: ask JetStream for it again
            await msg.nak(delay=0.1)
            return "deferred"
        effects.append(json.loads(msg.data)["id"])
        return "charged"

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, ack_wait=1.0) as stream:
            await js.publish(f"{stream}.new", b'{"id": "o-1"}', headers={"Nats-Msg-Id": "o-1"})
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            assert await drain(subscription, charge) == [1, 2]
            assert await nothing_pending(js, stream)
    assert runs == [1, 2]
    assert effects == ["o-1"]


async def test_b28_a_nak_redelivered_while_its_handler_still_runs_waits_and_runs_once(
    js: JetStreamContext,  # noqa: F811 - the fixture imported above
    async_store: AsyncStore,  # noqa: F811 - the fixture imported above
) -> None:
    """A redelivery that arrives before the naking handler returned waits for the message id,
    then, released, runs the handler: the effect happens once, and both are settled."""
    runs: list[int] = []
    effects: list[str] = []
    naked, finish = asyncio.Event(), asyncio.Event()

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)
    async def charge(msg: Msg) -> None:
        runs.append(msg.metadata.num_delivered)
        if len(runs) == 1:
            await msg.nak()  # redelivered at once, while this handler still runs
            naked.set()
            await finish.wait()
            return
        effects.append(json.loads(msg.data)["id"])

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, ack_wait=1.0) as stream:
            await js.publish(f"{stream}.new", b'{"id": "o-1"}', headers={"Nats-Msg-Id": "o-1"})
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            [first] = await subscription.fetch(1, timeout=5)
            handling = asyncio.create_task(charge(first))
            await naked.wait()
            [second] = await subscription.fetch(1, timeout=5)
            assert second.metadata.num_delivered == 2
            redelivered = asyncio.create_task(charge(second))  # finds the id in flight
            finish.set()
            await asyncio.gather(handling, redelivered)
            assert await drain(subscription, charge) == []
            assert await nothing_pending(js, stream)
    assert runs == [1, 2]
    assert effects == ["o-1"]


@pytest.mark.parametrize("verb", ["ack", "term"])
async def test_b28_a_handler_that_acks_or_terms_its_own_delivery_keeps_its_outcome(
    verb: str,
    js: JetStreamContext,  # noqa: F811 - the fixture imported above
    async_store: AsyncStore,  # noqa: F811 - the fixture imported above
) -> None:
    """A delivery the handler acked or terminated itself is settled once, and its outcome is
    stored: a re-publish of its id after the stream's duplicate window replays it."""
    effects: list[str] = []

    @jetstream_message(async_store, namespace="orders.charge", ack_wait=1.0)
    async def charge(msg: Msg) -> str:
        effects.append(json.loads(msg.data)["id"])
        await (msg.ack() if verb == "ack" else msg.term())
        return "done"

    with anyio.fail_after(BOUND):
        async with fresh_stream(js, duplicate_window=0.1, ack_wait=1.0) as stream:
            subject = f"{stream}.new"
            await publish_after_window(js, subject, b'{"id": "o-1"}', "o-1")
            subscription = await js.pull_subscribe_bind(durable="charge", stream=stream)
            assert await drain(subscription, charge) == [1]
            await publish_after_window(js, subject, b'{"id": "o-1"}', "o-1")  # a re-publish
            assert await drain(subscription, charge) == [1]  # replayed and acked
            assert await nothing_pending(js, stream)
    assert effects == ["o-1"]
