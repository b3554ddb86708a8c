"""B16: a renewal that failed is tried again a ninth of the lease later, not a third, so a store
that is briefly unreachable does not cost a running operation its lease; and no sooner, so a
store that keeps failing is not hammered. Real Redis, PostgreSQL and MariaDB, both faces,
through a relay cut while the operation runs (each renewal then fails at once).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from retrysafe import open_async_store, open_store
from retrysafe._decorator import idempotent
from tests.conftest import fresh_store_url
from tests.flow.conftest import WAIT_SECONDS, wait_until
from tests.flow.relay import Relay

LEASE = 3.0
INTERVAL = LEASE / 3
"""Renewals come this far apart while they succeed."""
FAILURES = 3
"""The failed renewals each test waits for before the store comes back."""
# Fail fast while cut: a pooled connection is not waited for long, nor a new one.
_OPTIONS = {
    "redis": "socket_timeout=1&connect_timeout=1",
    "postgres": "connect_timeout=1&pool_timeout=0.2",
    "mysql": "connect_timeout=1&pool_timeout=0.2",
}


@pytest.fixture(params=["redis", "postgres", "mysql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Relay]]:
    """A fresh store: its URL through a relay that can be cut, and the relay."""
    backend = str(request.param)
    with fresh_store_url(backend, request, tmp_path) as url:
        relay = Relay.before(url)
        try:
            yield relay.url(url, _OPTIONS[backend]), relay
        finally:
            relay.close()


def _failures(caplog: pytest.LogCaptureFixture) -> list[float]:
    """When each failed renewal was logged."""
    return [
        record.created
        for record in caplog.records
        if getattr(record, "retrysafe_event", None) == "renew_failed"
    ]


def _assert_tried_again_soon(failed: list[float]) -> None:
    """The failed renewals came about a third of the interval apart: sooner than the interval
    (a cut store fails each in well under a tenth of it), never all at once."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(failed)]
    assert gaps
    assert all(INTERVAL / 4 < gap < INTERVAL * 0.8 for gap in gaps), gaps


def test_b16_a_failed_sync_renewal_is_tried_again_a_third_of_the_interval_later(
    urls: tuple[str, Relay], caplog: pytest.LogCaptureFixture
) -> None:
    """With the store cut as the function starts, its renewals fail a ninth of the lease apart;
    once the store is back the result is stored, and the function ran once."""
    url, relay = urls
    caplog.set_level(logging.ERROR, logger="retrysafe")
    store = open_store(url)
    runs: list[str] = []

    @idempotent(store, key="key", namespace="tests.renewal-retries", lease=LEASE, wait=0)
    def charge(key: str) -> int:
        runs.append(key)
        relay.cut()
        wait_until(lambda: len(_failures(caplog)) >= FAILURES)
        relay.restore()
        return len(runs)

    try:
        assert charge("k") == 1
        _assert_tried_again_soon(_failures(caplog)[:FAILURES])
        assert charge("k") == 1  # held, or replayed once stored
        assert runs == ["k"]
    finally:
        relay.restore()
        store.close()


@pytest.mark.anyio
async def test_b16_a_failed_async_renewal_is_tried_again_a_third_of_the_interval_later(
    urls: tuple[str, Relay], caplog: pytest.LogCaptureFixture
) -> None:
    """The async heartbeat's twin of the above."""
    url, relay = urls
    caplog.set_level(logging.ERROR, logger="retrysafe")
    store = open_async_store(url)
    runs: list[str] = []

    @idempotent(store, key="key", namespace="tests.renewal-retries", lease=LEASE, wait=0)
    async def charge(key: str) -> int:
        runs.append(key)
        relay.cut()
        while len(_failures(caplog)) < FAILURES:  # noqa: ASYNC110 - logged by the heartbeat
            await anyio.sleep(0.01)
        relay.restore()
        return len(runs)

    try:
        with anyio.fail_after(WAIT_SECONDS):
            assert await charge("k") == 1
            _assert_tried_again_soon(_failures(caplog)[:FAILURES])
            assert await charge("k") == 1  # held, or replayed once stored
            assert runs == ["k"]
    finally:
        relay.restore()
        await store.aclose()
