"""The async Redis store's auto-pipelining: batches, per-command results and errors, NOSCRIPT,
a connection cut mid-batch, cancelled callers and the switch that turns it off, on real Redis.

Batches are proven by the batcher's counters (`batches`, `commands`), never by timing. A batch
is held open on the server by a `BLPOP` with a timeout queued among the store's commands: Redis
answers a connection's commands in order, so the commands behind it wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from retrysafe import Claim, Identity, StoreError, StoreUnavailableError
from retrysafe.stores._async.redis_commands import AsyncCommands
from retrysafe.stores._redis_packing import pack_commands
from retrysafe.stores._redis_pipeline import AsyncAutoPipeline
from retrysafe.stores.redis import AsyncRedisStore, RedisStore
from tests.conftest import unique_name
from tests.flow.relay import Relay

pytestmark = pytest.mark.redis

LEASE = 30.0
RETENTION = 3600.0


def ident(key: str) -> Identity:
    """An identity in the test namespace."""
    return Identity("test", "tenant-a", key)


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return unique_name()


@pytest.fixture
def raw(redis_url: str, prefix: str) -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database; deletes this test's keys afterwards."""
    client = redis.Redis.from_url(redis_url)
    yield client
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def url(redis_url: str, prefix: str, raw: redis.Redis) -> str:
    """The store URL for this test's prefix (its keys are cleaned up by `raw`)."""
    return f"{redis_url}?prefix={prefix}"


@pytest.fixture
def relay(redis_url: str) -> Iterator[Relay]:
    """A TCP relay in front of the test Redis that can be cut."""
    parts = urlsplit(redis_url)
    opened = Relay(parts.hostname or "127.0.0.1", parts.port or 6379)
    yield opened
    opened.close()


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async test body on a fresh event loop."""
    asyncio.run(main())


def batcher(store: AsyncRedisStore) -> AsyncAutoPipeline:
    """The store's batcher (the default executor of the async store)."""
    commands = store._commands
    assert isinstance(commands, AsyncAutoPipeline)
    return commands


def claim(store: AsyncRedisStore, key: str) -> Awaitable[Claim]:
    """Claim `key` with the test's lease and retention."""
    return store.claim(ident(key), "fp", lease=LEASE, retention=RETENTION)


async def hold_open(pipeline: AsyncAutoPipeline, prefix: str, seconds: float) -> Any:
    """Queue a BLPOP that keeps the batch's later replies waiting for `seconds` on the server."""
    return await pipeline._submit(("BLPOP", f"{prefix}:nothing", seconds), None)


def test_concurrent_calls_in_one_turn_share_one_batch_and_keep_their_results(url: str) -> None:
    """Fifty claims and a read issued in one loop turn go out as one batch; each caller gets its
    own reply (the first claim of each key acquires it, the second sees the holder)."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")  # connected, scripts loaded
        batches, commands = pipeline.batches, pipeline.commands
        keys = [f"k{index % 25}" for index in range(50)]
        claims, reads = await asyncio.gather(
            asyncio.gather(*(claim(store, key) for key in keys)), store.get(ident("warm-up"))
        )
        assert (pipeline.batches - batches, pipeline.commands - commands) == (1, 51)
        first, second = claims[:25], claims[25:]
        assert all(c.acquired for c in first)
        assert not any(c.acquired for c in second)
        for index, (won, lost) in enumerate(zip(first, second, strict=True)):
            assert won.record.identity == lost.record.identity == ident(f"k{index}")
            assert lost.record.token == won.token
        assert len({c.token for c in first}) == 25
        assert reads is not None
        assert reads.identity == ident("warm-up")
        await store.aclose()

    run(main)


def test_an_error_reply_fails_only_its_own_caller(url: str, raw: redis.Redis, prefix: str) -> None:
    """A key of the wrong type fails its claim with StoreError; the rest of the batch succeeds."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        raw.set(store._keys.key(ident("string")), b"not a hash")
        batches = pipeline.batches
        results = await asyncio.gather(
            claim(store, "a"), claim(store, "string"), claim(store, "b"), return_exceptions=True
        )
        assert pipeline.batches - batches == 1
        assert isinstance(results[0], Claim)
        assert results[0].acquired
        assert isinstance(results[1], StoreError)
        assert not isinstance(results[1], StoreUnavailableError)
        assert isinstance(results[2], Claim)
        assert results[2].acquired
        await store.aclose()

    run(main)


def test_noscript_is_recovered_within_the_batch(url: str, raw: redis.Redis) -> None:
    """After SCRIPT FLUSH, a batch of claims and completions loads the scripts and runs just
    the commands that met NOSCRIPT again: every caller gets its own result, in one batch."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        held = await asyncio.gather(*(claim(store, f"held-{index}") for index in range(5)))
        raw.script_flush()  # scripts only: the data of other tests is untouched
        batches = pipeline.batches
        done, fresh, read = await asyncio.gather(
            asyncio.gather(
                *(
                    store.complete(ident(f"held-{index}"), c.token, b"ok", retention=RETENTION)
                    for index, c in enumerate(held)
                )
            ),
            asyncio.gather(*(claim(store, f"fresh-{index}") for index in range(5))),
            store.get(ident("held-0")),
        )
        assert pipeline.batches - batches == 1
        assert [record.outcome for record in done] == [b"ok"] * 5
        assert all(c.acquired for c in fresh)
        assert read is not None  # the GET in the same batch needed no script
        # (nor did the fresh claims: one SET ... NX GET each)
        assert raw.script_exists(store._complete.sha) == [True]
        await store.aclose()

    run(main)


def test_a_connection_cut_mid_batch_fails_every_pending_call_then_recovers(
    relay: Relay, redis_url: str, prefix: str, raw: redis.Redis
) -> None:
    """Cut while a batch waits on the server: the claim whose reply was read keeps it, every
    caller still waiting gets StoreUnavailableError, and the next calls reconnect and work."""
    parts = urlsplit(redis_url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{relay.port}" if user else f"127.0.0.1:{relay.port}"
    through = parts._replace(netloc=netloc).geturl()
    url = f"{through}?prefix={prefix}&socket_timeout=10&connect_timeout=2"

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")
        before = asyncio.create_task(claim(store, "before"))
        blocker = asyncio.create_task(hold_open(pipeline, prefix, 10))
        behind = [asyncio.create_task(claim(store, f"behind-{index}")) for index in range(5)]
        assert (await before).acquired  # read: the rest of the batch waits behind the BLPOP
        assert not blocker.done()
        relay.cut()
        results = await asyncio.gather(*behind, return_exceptions=True)
        assert all(isinstance(result, StoreUnavailableError) for result in results)
        assert len({id(result.__cause__) for result in results}) == 5  # each its own error
        with pytest.raises(RedisConnectionError):
            await blocker
        with pytest.raises(StoreUnavailableError):
            await claim(store, "while-cut")
        relay.restore()
        again = await asyncio.gather(*(claim(store, f"after-{index}") for index in range(5)))
        assert all(c.acquired for c in again)
        assert (await claim(store, "before")).record.token == (await before).token
        await store.aclose()

    run(main)


def test_a_stalled_redis_fails_the_batch_and_the_calls_queued_behind_it() -> None:
    """A server that never answers: the batch in flight times out, and the calls queued behind
    it fail with it, unsent, rather than wait for a timeout of their own."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]

        async def main() -> None:
            store = AsyncRedisStore.from_url(
                f"redis://127.0.0.1:{port}/0?socket_timeout=0.5&connect_timeout=0.5"
            )
            pipeline = batcher(store)
            first = asyncio.create_task(claim(store, "first"))
            for _ in range(100):
                if pipeline.batches:
                    break
                await asyncio.sleep(0)
            assert pipeline.batches == 1  # sent; now waiting on the silent server
            behind = [asyncio.create_task(claim(store, f"behind-{i}")) for i in range(3)]
            results = await asyncio.gather(first, *behind, return_exceptions=True)
            assert all(isinstance(result, StoreUnavailableError) for result in results)
            assert pipeline.batches == 1
            await store.aclose()

        run(main)


def _trickling_redis(listener: socket.socket, sets: int, pause: float) -> None:
    """Serve one connection as an old Redis (RESP2) that answers the handshake at once, then
    waits for `sets` SET commands and answers each with nil (set) `pause` seconds after the
    last."""
    connection, _ = listener.accept()
    with connection:
        buffer, seen = b"", 0
        while seen < sets:
            data = connection.recv(65536)
            if not data:
                return
            buffer += data
            while (parsed := _resp_command(buffer)) is not None:
                command, buffer = parsed
                name = command[0].upper()
                if name == b"SET":
                    seen += 1
                elif name == b"HELLO":  # the client falls back to RESP2
                    connection.sendall(b"-ERR unknown command 'HELLO'\r\n")
                else:
                    connection.sendall(b"+OK\r\n")
        with contextlib.suppress(OSError):  # the client may hang up before the last
            for _ in range(sets):
                time.sleep(pause)
                connection.sendall(b"$-1\r\n")
            connection.recv(65536)  # until the client closes


def _resp_command(buffer: bytes) -> tuple[list[bytes], bytes] | None:
    """Split one RESP command (an array of bulk strings) off `buffer`, or None if incomplete."""
    if not buffer.startswith(b"*") or b"\r\n" not in buffer:
        return None
    head, rest = buffer.split(b"\r\n", 1)
    parts: list[bytes] = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None
        length, rest = rest.split(b"\r\n", 1)
        size = int(length[1:])
        if len(rest) < size + 2:
            return None
        parts.append(rest[:size])
        rest = rest[size + 2 :]
    return parts, rest


def test_a_batch_is_read_within_one_socket_timeout_in_all() -> None:
    """A server that trickles a batch's replies, each within `socket_timeout` of the last but
    the batch not: the calls whose replies come after the bound fail, so no call waits for
    more than the timeout per batch (each reply timed on its own, the four calls would have
    taken 1.2 s against a bound of 0.5 s, and succeeded)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        server = threading.Thread(target=_trickling_redis, args=(listener, 4, 0.3), daemon=True)
        server.start()

        async def main() -> None:
            store = AsyncRedisStore.from_url(
                f"redis://127.0.0.1:{port}/0?socket_timeout=0.5&connect_timeout=2"
            )
            pipeline = batcher(store)
            keys = [f"k{index}" for index in range(4)]
            results = await asyncio.gather(
                *(claim(store, key) for key in keys), return_exceptions=True
            )
            assert pipeline.batches == 1  # the four claims went out together
            # The replies come 0.3, 0.6, 0.9 and 1.2 s after the batch: the last three past it.
            assert all(isinstance(result, StoreUnavailableError) for result in results[1:])
            await store.aclose()

        run(main)
        server.join(timeout=10)


def test_a_caller_cancelled_before_the_write_is_left_out(url: str) -> None:
    """A caller cancelled while its command is queued: the command is not sent, the others'
    commands go out in one batch and return their own results."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")
        batches, commands = pipeline.batches, pipeline.commands
        tasks = [asyncio.create_task(claim(store, key)) for key in ("a", "b", "c")]
        await asyncio.sleep(0)  # each task has queued its command; the sender runs next turn
        tasks[1].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert [r.acquired for r in (results[0], results[2])] == [True, True]  # type: ignore[union-attr]
        assert (pipeline.batches - batches, pipeline.commands - commands) == (1, 2)
        assert await store.get(ident("b")) is None
        await store.aclose()

    run(main)


def test_a_caller_cancelled_in_flight_does_not_disturb_the_batch(url: str, prefix: str) -> None:
    """A caller cancelled after its command was sent: the command runs, its reply is read and
    dropped, the callers behind it get their own replies, and the next batch reads its own."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        await claim(store, "warm-up")
        first = asyncio.create_task(claim(store, "first"))
        blocker = asyncio.create_task(hold_open(pipeline, prefix, 0.3))
        cancelled = asyncio.create_task(claim(store, "cancelled"))
        last = asyncio.create_task(claim(store, "last"))
        assert (await first).acquired  # the batch is written; the rest waits behind the BLPOP
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert await blocker is None
        assert (await last).acquired
        applied = await claim(store, "cancelled")  # sent before the cancellation: it ran
        assert not applied.acquired
        assert (await claim(store, "next")).record.identity == ident("next")
        await store.aclose()

    run(main)


def test_aclose_lets_the_queued_calls_finish(url: str) -> None:
    """Closing the store while calls are queued answers them first, then closes its connection."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(url)
        pipeline = batcher(store)
        tasks = [asyncio.create_task(claim(store, f"k{index}")) for index in range(10)]
        await asyncio.sleep(0)
        await store.aclose()
        assert all(task.done() for task in tasks)
        assert all(task.result().acquired for task in tasks)
        assert pipeline._connection is None

    run(main)


# The first loop's connection cannot be closed once that loop is: it is left to the garbage
# collector, which warns, as redis-py's own pool leaves its connections in the same case.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_one_store_on_two_event_loops_in_turn(url: str) -> None:
    """A store used by one event loop and then another starts afresh on the second."""
    store = AsyncRedisStore.from_url(url)

    async def first() -> None:
        assert (await claim(store, "first")).acquired

    async def second() -> None:
        assert (await claim(store, "second")).acquired
        await store.aclose()

    run(first)
    run(second)
    gc.collect()  # the warning about the first loop's connection, here and not in another test


def test_autopipeline_false_sends_each_command_on_its_own(url: str) -> None:
    """`?autopipeline=false` gives the async store the per-command executor; the sync store
    accepts the option and always sends each command on its own."""

    async def main() -> None:
        store = AsyncRedisStore.from_url(f"{url}&autopipeline=false")
        assert type(store._commands) is AsyncCommands
        claimed = await claim(store, "async")
        assert claimed.acquired
        await store.complete(ident("async"), claimed.token, b"ok", retention=RETENTION)
        record = await store.get(ident("async"))
        assert record is not None
        assert record.outcome == b"ok"
        await store.aclose()

    run(main)
    for option in ("true", "false"):
        sync_store = RedisStore.from_url(f"{url}&autopipeline={option}")
        assert sync_store.claim(ident(f"sync-{option}"), "fp", lease=LEASE, retention=60).acquired
        sync_store.close()


@pytest.mark.parametrize(
    "command",
    [
        ("EVALSHA", "a" * 40, 1, b"key\x00\xff", b"", "fp", 1733480000.123456789, 0.1, 30, 10**20),
        ("SET", b"k", "caf\u00e9 \u221a", "NX", "PX", 86_400_000, "GET"),
        ("HMGET", b"k", "state", "token"),
    ],
    ids=["evalsha", "set", "hmget"],
)
def test_commands_are_packed_as_redis_py_packs_them(command: tuple[Any, ...]) -> None:
    """The batcher packs with hiredis: byte for byte what redis-py's own packer writes, for the
    kinds of arguments the stores send (bytes, text, integers, floats)."""
    connection = redis.asyncio.Redis().connection_pool.make_connection()
    assert b"".join(pack_commands(connection, [command, command])) == b"".join(
        connection.pack_commands([command, command])
    )
