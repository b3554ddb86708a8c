"""NATS JetStream consumers whose settlement fails: the connection closes while the handler
runs, so its `ack`, `nak` or `term` cannot reach JetStream. The wrapper logs it and raises
nothing; JetStream redelivers, and the redelivery replays (or, after a nak, runs again)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anyio
import nats
import pytest
from nats.aio.msg import Msg

from retrysafe import open_async_store
from retrysafe.consumers import jetstream_message
from tests.functions.test_nats_consumers import BOUND, fresh_stream, nothing_pending

pytestmark = [pytest.mark.nats, pytest.mark.anyio]


class CardDeclinedError(Exception):
    """A definitive business failure: stored as the outcome, never retried."""


# How the first run ends: how JetStream would have been told, and how many runs in all.
ENDINGS = {"returns": ("ack", 1), "final": ("term", 1), "transient": ("nak", 2)}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_b26_a_settlement_that_fails_is_logged_and_the_redelivery_replays(
    ending: str, nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When the connection closes while the handler runs, the failed ack, term or nak is
    logged, not raised; JetStream redelivers, and the redelivery settles it for good with the
    effect applied once (run again only after a transient error released the claim)."""
    caplog.set_level(logging.WARNING, "retrysafe.consumers")
    verb, runs = ENDINGS[ending]
    store = open_async_store(f"sqlite:///{tmp_path / 'consumer.db'}")
    effects: list[str] = []
    attempts: list[str] = []
    first = await nats.connect(nats_url)
    again = await nats.connect(nats_url)

    @jetstream_message(
        store,
        namespace="orders.charge",
        ack_wait=1.0,
        nak_delay=0,
        final_exceptions=(CardDeclinedError,),
    )
    async def charge(msg: Msg) -> None:
        order = json.loads(msg.data)["id"]
        attempts.append(order)
        if len(attempts) == 1:
            await first.close()  # a shutdown: the delivery cannot be settled on it any more
            if ending == "final":
                raise CardDeclinedError(order)
            if ending == "transient":
                raise ConnectionError("the provider timed out")
        effects.append(order)

    try:
        with anyio.fail_after(BOUND):
            js = again.jetstream()
            async with fresh_stream(js, ack_wait=1.0) as stream:
                await js.publish(f"{stream}.new", b'{"id": "o-1"}', headers={"Nats-Msg-Id": "o-1"})
                pull = await first.jetstream().pull_subscribe_bind(durable="charge", stream=stream)
                [msg] = await pull.fetch(1, timeout=5)
                assert await charge(msg) is None  # the failed settlement is not raised
                # After ack_wait (1 s), JetStream delivers it again on the other connection.
                redelivery = await js.pull_subscribe_bind(durable="charge", stream=stream)
                [msg] = await redelivery.fetch(1, timeout=10)
                assert msg.metadata.num_delivered == 2
                await charge(msg)
                assert await nothing_pending(js, stream)
    finally:
        await again.close()
        await first.close()
        await store.aclose()
    assert attempts == ["o-1"] * runs
    assert effects == ([] if ending == "final" else ["o-1"])
    failed = [
        record.getMessage()
        for record in caplog.records
        if record.name == "retrysafe.consumers" and f"{verb} failed" in record.getMessage()
    ]
    assert len(failed) == 1, caplog.text
