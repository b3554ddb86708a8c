"""The Redis stores against a private `redis-server` each test starts on a free port: one it can
freeze (SIGSTOP) under a waiting duplicate, or start without persistence.

A frozen server keeps its sockets and accepts connections (the kernel does), but answers
nothing: every read waits for the client's `socket_timeout`, unless the caller bounds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from retrysafe import Identity, InFlightError, State, StoreUnavailableError, idempotent
from retrysafe.stores.redis import AsyncRedisStore, RedisStore
from tests.conftest import service_missing
from tests.servers import wait_for_port

pytestmark = pytest.mark.redis

WAIT = 1.0
"""The duplicate's wait: far shorter than the store's socket timeout below."""
SOCKET_TIMEOUT = 6.0
SLACK = 0.6
"""What a loaded test machine may add to a bound: scheduling, the claim's round trip."""


class PrivateRedis:
    """A `redis-server` of this test's own, which it may freeze and must stop."""

    def __init__(self, workdir: Path, *options: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            service_missing("redis-server", "a private Redis needs `redis-server` on PATH")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir)]
        self.process = subprocess.Popen([binary, *arguments, *options], stdout=subprocess.DEVNULL)
        self.frozen = False
        wait_for_port(self.port, alive=lambda: self.process.poll() is None)

    def url(self, query: str) -> str:
        return f"redis://127.0.0.1:{self.port}/0?{query}"

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        if self.frozen:
            os.kill(self.process.pid, signal.SIGCONT)
            self.frozen = False

    def stop(self) -> None:
        self.thaw()  # a stopped process ignores SIGTERM until it runs again
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A throwaway Redis without persistence; thawed and stopped afterwards, whatever happens."""
    server = PrivateRedis(tmp_path, "--save", "", "--appendonly", "no")
    try:
        yield server
    finally:
        server.stop()


def _wait_for_mark(port: int) -> None:
    """Wait (bounded) until a waiter has read and marked the only record (byte 3 of its value):
    from then on its next read is one of its re-reads."""
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        for _ in range(1000):
            for key in client.scan_iter(match="b15:*"):
                if not key.endswith(b":replicated") and client.getrange(key, 2, 2) == b"1":
                    return
            time.sleep(0.01)
        raise AssertionError("no waiter marked the record")
    finally:
        client.close()


def test_b15_sync_duplicate_on_a_frozen_redis_answers_in_flight_within_its_wait(
    private_redis: PrivateRedis,
) -> None:
    """Redis freezes while a duplicate waits: the duplicate still ends when its wait does, with
    InFlightError (a timed-out wait, B15), not after the socket timeout, and runs nothing."""
    url = private_redis.url(f"prefix=b15&socket_timeout={SOCKET_TIMEOUT:g}")
    stores = [RedisStore.from_url(url), RedisStore.from_url(url)]
    ran: list[str] = []
    entered, release = threading.Event(), threading.Event()

    def function(store: RedisStore) -> object:
        @idempotent(store, key="key", namespace="b15", wait=WAIT, lease=60)
        def pay(key: str) -> str:
            ran.append(key)
            entered.set()
            release.wait(30)
            return "paid"

        return pay

    first = threading.Thread(target=function(stores[0]), args=("k",), daemon=True)
    outcome: list[object] = []

    def duplicate() -> None:
        started = time.monotonic()
        try:
            outcome.append(function(stores[1])("k"))
        except Exception as error:  # the answer under test
            outcome.append(error)
        outcome.append(time.monotonic() - started)

    waiter = threading.Thread(target=duplicate, daemon=True)
    try:
        first.start()
        assert entered.wait(30)
        waiter.start()
        _wait_for_mark(private_redis.port)
        private_redis.freeze()
        waiter.join(30)
        assert not waiter.is_alive()
    finally:
        private_redis.thaw()
        release.set()
        first.join(30)
        for store in stores:
            store.close()
    answer, took = outcome
    assert isinstance(answer, InFlightError), answer
    assert isinstance(took, float)
    assert took < WAIT + SLACK, f"the duplicate took {took:.2f} s with wait={WAIT}"
    assert ran == ["k"]


def test_b15_async_duplicate_on_a_frozen_redis_answers_in_flight_within_its_wait(
    private_redis: PrivateRedis,
) -> None:
    """The async face of the test above: the re-read on the frozen Redis is cut off at the
    wait's end, and the duplicate gets InFlightError then."""
    url = private_redis.url(f"prefix=b15&socket_timeout={SOCKET_TIMEOUT:g}")
    ran: list[str] = []

    async def main() -> tuple[object, float]:
        stores = [AsyncRedisStore.from_url(url), AsyncRedisStore.from_url(url)]
        entered, release = asyncio.Event(), asyncio.Event()

        def function(store: AsyncRedisStore) -> object:
            @idempotent(store, key="key", namespace="b15", wait=WAIT, lease=60)
            async def pay(key: str) -> str:
                ran.append(key)
                entered.set()
                await asyncio.wait_for(release.wait(), 30)
                return "paid"

            return pay

        async def duplicate() -> tuple[object, float]:
            started = time.monotonic()
            try:
                answer: object = await function(stores[1])("k")  # type: ignore[operator]
            except Exception as error:  # the answer under test
                answer = error
            return answer, time.monotonic() - started

        first = asyncio.create_task(function(stores[0])("k"))  # type: ignore[operator]
        try:
            await asyncio.wait_for(entered.wait(), 30)
            waiting = asyncio.create_task(duplicate())
            await asyncio.to_thread(_wait_for_mark, private_redis.port)
            private_redis.freeze()
            return await asyncio.wait_for(waiting, 30)
        finally:
            private_redis.thaw()
            release.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(first, 30)
            for store in stores:
                await store.aclose()

    answer, took = asyncio.run(main())
    assert isinstance(answer, InFlightError), answer
    assert took < WAIT + SLACK, f"the duplicate took {took:.2f} s with wait={WAIT}"
    assert ran == ["k"]


@pytest.mark.parametrize("face", ["sync", "async"])
def test_b15_a_wait_that_reads_nothing_from_a_frozen_redis_fails_by_its_end(
    private_redis: PrivateRedis, face: str
) -> None:
    """Frozen before the wait's first read: the wait learns nothing, and fails as a store
    outage (StoreUnavailableError: 503, B20) by its end, not after the socket timeout."""
    url = private_redis.url(f"prefix=b15&socket_timeout={SOCKET_TIMEOUT:g}")
    identity = Identity("b15", "s", "k")

    def sync_wait() -> None:
        store = RedisStore.from_url(url)
        try:
            claim = store.claim(identity, "fp", lease=60, retention=60)
            assert store.get(identity) is not None
            private_redis.freeze()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                store.wait(identity, timeout=WAIT)
            took.append(time.monotonic() - started)
            private_redis.thaw()
            store.release(identity, claim.token)
        finally:
            private_redis.thaw()
            store.close()

    async def async_wait() -> None:
        store = AsyncRedisStore.from_url(url)
        try:
            claim = await store.claim(identity, "fp", lease=60, retention=60)
            private_redis.freeze()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await store.wait(identity, timeout=WAIT)
            took.append(time.monotonic() - started)
            private_redis.thaw()
            await store.release(identity, claim.token)
        finally:
            private_redis.thaw()
            await store.aclose()

    took: list[float] = []
    if face == "sync":
        sync_wait()
    else:
        asyncio.run(async_wait())
    assert took[0] < WAIT + SLACK, f"the wait took {took[0]:.2f} s with timeout={WAIT}"


@pytest.mark.parametrize("face", ["sync", "async"])
def test_b15_a_short_wait_on_a_live_redis_still_reads_the_record(
    private_redis: PrivateRedis, face: str
) -> None:
    """The floor of a wait's first read: a timeout of a millisecond still subscribes and reads
    the record (in flight) rather than failing for want of time."""
    url = private_redis.url("prefix=b15")
    identity = Identity("b15", "s", "k")

    async def async_wait() -> object:
        store = AsyncRedisStore.from_url(url)
        try:
            await store.claim(identity, "fp", lease=60, retention=60)
            return await store.wait(identity, timeout=0.001)
        finally:
            await store.aclose()

    if face == "sync":
        store = RedisStore.from_url(url)
        try:
            store.claim(identity, "fp", lease=60, retention=60)
            record = store.wait(identity, timeout=0.001)
        finally:
            store.close()
    else:
        record = asyncio.run(async_wait())
    assert record is not None
    assert getattr(record, "state", None) is State.IN_FLIGHT


@contextlib.contextmanager
def _master_and_replica(workdir: Path, *options: str) -> Iterator[PrivateRedis]:
    """A private master started with `options`, and a replica of it in sync."""
    (workdir / "master").mkdir()
    (workdir / "replica").mkdir()
    # The replica syncs at once, rather than 5 s later (the master waiting for more replicas).
    master = PrivateRedis(workdir / "master", "--repl-diskless-sync-delay", "0", *options)
    replica: PrivateRedis | None = None
    try:
        replica = PrivateRedis(
            workdir / "replica", "--save", "", "--replicaof", "127.0.0.1", str(master.port)
        )
        client = redis.Redis(port=replica.port, socket_timeout=5)
        try:
            for _ in range(1500):
                if client.info("replication").get("master_link_status") == "up":
                    break
                time.sleep(0.01)
            else:
                raise AssertionError("the replica never synced")
        finally:
            client.close()
        yield master
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


PERSISTENCE = {
    "none": ("--save", "", "--appendonly", "no"),
    "aof": ("--save", "", "--appendonly", "yes"),
    "rdb": ("--save", "3600 1", "--appendonly", "no"),
}


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize("persistence", sorted(PERSISTENCE))
def test_b16_min_replicas_warns_of_a_master_without_persistence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, face: str, persistence: str
) -> None:
    """A master that keeps nothing across a restart would empty its replicas if restarted
    before a failover, losing confirmed claims: with `min_replicas`, the store says so once,
    after its first write; with AOF or RDB save points it says nothing."""
    identity = Identity("b16", "s", "k")
    caplog.set_level(logging.WARNING, logger="retrysafe.stores")
    with _master_and_replica(tmp_path, *PERSISTENCE[persistence]) as master:
        url = master.url("prefix=b16&min_replicas=1&replica_timeout_ms=2000")
        if face == "sync":
            store = RedisStore.from_url(url)
            try:
                claim = store.claim(identity, "fp", lease=60, retention=60)
                store.complete(identity, claim.token, b"done", retention=60)
            finally:
                store.close()
        else:

            async def main() -> None:
                store = AsyncRedisStore.from_url(url)
                try:
                    claim = await store.claim(identity, "fp", lease=60, retention=60)
                    await store.complete(identity, claim.token, b"done", retention=60)
                finally:
                    await store.aclose()

            asyncio.run(main())
    warnings = [r for r in caplog.records if "neither AOF nor RDB" in r.getMessage()]
    assert len(warnings) == (1 if persistence == "none" else 0), caplog.text
