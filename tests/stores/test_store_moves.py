"""The async Redis and MySQL stores used on a second event loop, and in a process forked after
they were used (gunicorn `--preload`): they leave the connections of the last loop or of the
parent and open their own, so no asyncio `RuntimeError` reaches the caller (B24, the store raises
only store errors) and no key is left stuck in flight; a forked child neither writes on its
parent's connections nor closes them; the threads of a forked child move a sync MySQL store once
(against real Redis, a real Redis Cluster and MariaDB, with real `fork()` and `asyncio.run`).
Should a connection of another loop reach a call anyway, asyncio's complaint leaves the store as
`StoreUnavailableError`, and nothing else is mistaken for it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import multiprocessing
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from retrysafe import Identity, State, StoreUnavailableError, open_async_store, open_store
from retrysafe.asgi import IdempotencyMiddleware
from retrysafe.stores._home import unusable_here
from retrysafe.stores._redis_errors import translate_errors
from retrysafe.stores.redis import AsyncRedisClusterStore, AsyncRedisStore
from retrysafe.testing import HTTPRequest, RunCounter, assert_runs_once
from tests.conftest import cluster_seeds, delete_redis_prefix, fresh_store_url, unique_name

# Every test uses a store on a loop after another loop closed: the store closes the connections
# of the closed loop as far as it allows, and the garbage collector closes their sockets, with a
# ResourceWarning (each test collects them before it ends, so they are not another test's).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

LEASE = 30.0
RETENTION = 3600.0
BOUND = 10.0  # seconds a store's work may take, at most
REPORT_BOUND = 30.0  # seconds a child may take to report (its work's failure included)
KEYS = 6
WAITERS = 6
AUTHORIZED = {"Authorization": "Bearer a"}  # the scope of the middleware's keys


def on_own_client(url: str) -> Any:
    """Open the Redis store of `url` on a client made here, as an app passes its own."""
    parts = urlsplit(url)
    prefix = parse_qs(parts.query)["prefix"][0]
    if parts.scheme == "redis":
        client = AsyncRedis.from_url(parts._replace(query="").geturl())
        return AsyncRedisStore(client, prefix=prefix, owns_client=True)
    seeds = [ClusterNode(host, port) for host, port in cluster_seeds(url)]
    cluster = RedisCluster(startup_nodes=seeds)
    return AsyncRedisClusterStore(cluster, prefix=prefix, owns_client=True)


# backend (tests/conftest.py's `fresh_store_url`), what the URL adds, and how the store is opened
STORES: dict[str, tuple[str, str, Callable[[str], Any]]] = {
    "redis": ("redis", "", open_async_store),
    "redis-nopipe": ("redis", "&autopipeline=false", open_async_store),
    "redis-own-client": ("redis", "", on_own_client),
    "redis-cluster": ("redis-cluster", "", open_async_store),
    "redis-cluster-wait": ("redis-cluster-wait", "", open_async_store),
    "redis-cluster-own-client": ("redis-cluster", "", on_own_client),
    "mysql": ("mysql", "", open_async_store),
}


@pytest.fixture(params=list(STORES))
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens a fresh async store of each kind."""
    backend, extra, opener = STORES[request.param]
    with fresh_store_url(backend, request, tmp_path) as base:
        yield functools.partial(opener, base + extra)


def ident(scope: str, key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("moves", scope, key)


async def work(store: Any, scope: str) -> list[str]:
    """Claim, complete and replay `KEYS` keys of `scope` at once, wake `WAITERS` waiters of one
    more, list and count them; return whatever went wrong (nothing is raised)."""
    wrong: list[str] = []

    async def one(key: str) -> None:
        identity, outcome = ident(scope, key), f"{scope}/{key}".encode()
        claim = await store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        if not claim.acquired:
            wrong.append(f"{key}: not acquired")
            return
        await store.complete(identity, claim.token, outcome, retention=RETENTION)
        replay = await store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        record = await store.get(identity)
        if replay.acquired or [replay.record.outcome, record and record.outcome] != [outcome] * 2:
            wrong.append(f"{key}: replayed {replay.record.outcome!r}")

    async def waiting() -> None:
        held = ident(scope, "held")
        claim = await store.claim(held, "fp", lease=LEASE, retention=RETENTION)
        waiters = [asyncio.ensure_future(store.wait(held, timeout=BOUND)) for _ in range(WAITERS)]
        await asyncio.sleep(0)  # let them start: a completion before a waiter reads is found too
        await store.complete(held, claim.token, b"held", retention=RETENTION)
        settled = await asyncio.gather(*waiters)
        if [record and record.state for record in settled] != [State.DONE] * WAITERS:
            wrong.append(f"waiters: {settled!r}")

    try:
        async with asyncio.timeout(BOUND):
            await asyncio.gather(*(one(f"k{n}") for n in range(KEYS)), waiting())
            listed = {record.identity.key for record in await store.list_records(scope=scope)}
            if listed != {f"k{n}" for n in range(KEYS)} | {"held"}:
                wrong.append(f"listed {sorted(listed)}")
            await store.stats()
    except Exception as error:  # every failure is reported, the kind of error first
        wrong.append(f"raised {type(error).__module__}.{type(error).__name__}: {error}")
    return wrong


def test_b24_a_store_used_again_on_a_new_event_loop_works_there(
    new_store: Callable[[], Any],
) -> None:
    """A store used on one event loop (`asyncio.run` at start-up) and then on another claims,
    completes, replays, wakes waiters and lists on the second without a `RuntimeError`."""
    store = new_store()
    first = asyncio.run(work(store, "first"))
    second = asyncio.run(work(store, "second"))
    asyncio.run(store.aclose())
    gc.collect()  # the first loop's sockets, closed here and not in another test

    assert (first, second) == ([], [])


def in_child(report: Any, store: Any) -> None:  # pragma: no cover - the child's
    """Use the parent's store in a forked child and send back what went wrong, and what the
    garbage collector or a finalizer complained of (a parent's connection closed here)."""
    complaints: list[str] = []
    sys.unraisablehook = lambda raised: complaints.append(repr(raised.exc_value))

    async def main() -> list[str]:
        wrong = await work(store, "child")
        await store.aclose()
        return wrong

    wrong = asyncio.run(main())
    gc.collect()
    report.send({"wrong": wrong, "complaints": complaints})


def test_b14_each_of_two_checks_on_their_own_loops_runs_once_for_every_duplicate(
    new_store: Callable[[], Any],
) -> None:
    """`assert_runs_once` twice on one app (each check runs on an event loop of its own): in
    each, the effect runs once and every duplicate gets the one 201, none a 409 or an error."""
    charges = RunCounter()

    async def pay(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        charges.increment()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"paid"})

    store = new_store()
    app = IdempotencyMiddleware(pay, store=store)
    summaries = []
    for check in range(2):
        request = HTTPRequest("POST", "/pay", json={"check": check}, headers=AUTHORIZED)
        summaries.append(assert_runs_once(app, runs=charges, request=request).summary())
    asyncio.run(store.aclose())
    gc.collect()

    assert summaries == ["201 x1, 201 replayed x7"] * 2


def run_in_fork(store: Any, target: Any = in_child) -> Any:
    """Run `target` (`in_child`) in a process forked from this one; return its report."""
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=target, args=(send, store))
    child.start()
    try:
        assert receive.poll(REPORT_BOUND), "the child did not report in time"
        return receive.recv()
    finally:
        child.join(REPORT_BOUND)
        if child.is_alive():  # pragma: no cover - a stuck child
            child.kill()
            child.join()


def test_b24_a_store_used_before_a_fork_works_in_the_child_and_the_parent(
    new_store: Callable[[], Any],
) -> None:
    """A child forked after the parent used the store (gunicorn `--preload`) claims, completes,
    replays, wakes waiters and lists without an error, and without closing or finalizing a
    parent's connection; the parent goes on with the store afterwards."""
    store = new_store()
    before = asyncio.run(work(store, "parent"))

    report = run_in_fork(store)
    after = asyncio.run(work(store, "parent-after"))
    asyncio.run(store.aclose())
    gc.collect()

    assert before == []
    assert report == {"wrong": [], "complaints": []}
    assert after == []


def named_connections(url: str, name: str) -> dict[int, str]:
    """The Redis server's connections named `name`: their ids and last commands."""
    client = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        return {c["id"]: c["cmd"] for c in client.client_list() if c["name"] == name}
    finally:
        client.close()


@pytest.mark.parametrize("autopipeline", [True, False], ids=["autopipeline", "nopipe"])
def test_b35_a_forked_child_sends_nothing_on_its_parents_redis_connections(
    redis_url: str, autopipeline: bool
) -> None:
    """A child forked after the parent used a store built on a client of the parent's opens its
    own connections: every connection the parent had is still open afterwards, its last command
    the parent's (a command sent on a shared socket hands its reply to either process)."""
    prefix, name = unique_name(), unique_name("rs_parent")
    client = AsyncRedis.from_url(redis_url, client_name=name)
    store = AsyncRedisStore(client, prefix=prefix, owns_client=True, autopipeline=autopipeline)
    try:
        assert asyncio.run(work(store, "parent")) == []
        parents = named_connections(redis_url, name)
        assert parents

        report = run_in_fork(store)

        still = named_connections(redis_url, name)
        assert {id_: still.get(id_) for id_ in parents} == parents
        assert report == {"wrong": [], "complaints": []}
        asyncio.run(store.aclose())
        gc.collect()
    finally:
        delete_redis_prefix(redis_url, prefix)


def loop_complaints() -> list[RuntimeError]:
    """What asyncio raises when a connection of another event loop is used: that loop is closed
    (a callback scheduled there), or a future of that loop is awaited on this one."""
    other = asyncio.new_event_loop()
    other.close()
    complaints: list[RuntimeError] = []

    async def await_a_future_of_the_other_loop() -> None:
        await other.create_future()

    for complain in (
        functools.partial(other.call_soon, print),
        functools.partial(asyncio.run, await_a_future_of_the_other_loop()),
    ):
        try:
            complain()
        except RuntimeError as error:
            complaints.append(error)
    return complaints


TRANSLATIONS = {
    "redis": translate_errors,
    "mysql": functools.partial(unusable_here, "MySQL"),
}


@pytest.mark.parametrize("translation", list(TRANSLATIONS))
def test_b20_asyncio_complaints_about_another_loop_are_store_unavailable(translation: str) -> None:
    """Should a connection of another event loop reach a call (two loops using one store at
    once, which is not supported), asyncio's complaint leaves the store as
    `StoreUnavailableError` (the middleware fails closed: 503) caused by it; any other
    `RuntimeError`, a programming error, leaves as it is."""
    translated = TRANSLATIONS[translation]
    complaints = loop_complaints()
    assert len(complaints) == 2
    for complaint in complaints:
        unavailable = pytest.raises(StoreUnavailableError, match="another event loop")
        with unavailable as raised, translated():
            raise complaint
        assert raised.value.__cause__ is complaint

    mistake = RuntimeError("dictionary changed size during iteration")
    with pytest.raises(RuntimeError) as raised_as_is, translated():
        raise mistake
    assert raised_as_is.value is mistake


THREADS = 16
ROUNDS = 8  # children: each is a race of its threads to move the store


def threads_at_once(report: Any, store: Any) -> None:  # pragma: no cover - the child's
    """Use the parent's sync store from `THREADS` threads of a forked child at once, each for
    the first time; send back the errors."""
    errors: list[str] = []
    start = threading.Barrier(THREADS)

    def reads() -> None:
        start.wait(BOUND)
        try:
            for _ in range(3):
                store.get(ident("child", "k"))
        except Exception as error:  # every failure is reported
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=reads) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(REPORT_BOUND)
    report.send(errors)


def test_b24_threads_of_a_forked_child_move_a_sync_mysql_store_once(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The threads of a forked child that first use a sync MySQL store at once all get their
    answers: one leaves the parent's connections and pool gate behind while the others wait
    (no gate released twice, `ValueError`, nor a place of the gate lost)."""
    with fresh_store_url("mysql", request, tmp_path) as url:
        store = open_store(f"{url}&pool_max=4&pool_timeout=2")
        try:
            assert store.get(ident("parent", "k")) is None
            reports = [run_in_fork(store, threads_at_once) for _ in range(ROUNDS)]
        finally:
            store.close()

    assert reports == [[]] * ROUNDS
