"""50 parallel duplicates through three proxy processes on one store run once (B14, B15)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import unique_name
from tests.proxy.conftest import (
    Proxy,
    Recorder,
    Upstream,
    delete_redis_prefix,
    drop_postgres_table,
    stop_proxies,
)

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
PROCESSES = 3
DUPLICATES = 50


@pytest.fixture(scope="module", params=["postgres", "redis"])
def shared(
    request: pytest.FixtureRequest, upstream: Upstream, proxies: Start
) -> Iterator[list[Proxy]]:
    """Three proxy processes in front of the upstream, sharing a fresh store on one backend."""
    name = unique_name("rs_proxy")
    if request.param == "postgres":
        base = request.getfixturevalue("postgres_url")
        store = f"{base}?table={name}"
    else:
        base = request.getfixturevalue("redis_url")
        store = f"{base}?prefix={name}"
    started = proxies([(["--upstream", upstream.url, "--store", store], None)] * PROCESSES)
    yield started
    # Stop them now (not at the module's end), so their store goes once they no longer write.
    stop_proxies(started)
    if request.param == "postgres":
        drop_postgres_table(base, name)
    else:
        delete_redis_prefix(base, name)


async def _send_all(urls: list[str], key: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=DUPLICATES)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(
                    f"{urls[index % len(urls)]}/slow?seconds=0.5",
                    headers={"Idempotency-Key": key, "Authorization": "Bearer proxy-test"},
                    content=b'{"amount":1}',
                )
                for index in range(DUPLICATES)
            )
        )


def test_b14_b15_parallel_duplicates_across_processes_run_once(
    shared: list[Proxy], recorder: Recorder
) -> None:
    """Every duplicate, on any process, waits for the one outcome; the upstream ran once."""
    responses = asyncio.run(_send_all([proxy.url for proxy in shared], str(uuid.uuid4())))
    assert [r.status_code for r in responses] == [201] * DUPLICATES
    assert len({r.content for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == DUPLICATES - 1
    assert recorder.calls["/slow"] == 1
