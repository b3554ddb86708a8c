"""The sync PostgreSQL store in processes forked after it was used (gunicorn `--preload`,
multiprocessing's fork): each child opens its own connections and leaves its parent's alone,
neither using nor closing them (against a real PostgreSQL server, with real `os.fork()`).
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from retrysafe import Identity, open_store
from retrysafe.stores.postgres import PostgresStore
from tests.conftest import unique_name

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning"),
]

LEASE = 30.0
RETENTION = 3600.0
BOUND = 30.0  # seconds any wait of a test may take, at most
CHILDREN = 4
KEYS = 12  # per child


def ident(scope: str, key: str) -> Identity:
    """An identity in this module's namespace."""
    return Identity("pg-fork", scope, key)


def outcome(scope: str, key: str) -> bytes:
    """The outcome stored for a key: it names its own scope and key, so a leak shows."""
    return f"{scope}/{key}".encode()


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    """A sync store on a fresh table, opened as an app does; the table is dropped afterwards."""
    table = unique_name()
    opened = open_store(f"{postgres_url}?table={table}&pool_min=2&pool_timeout=5")
    assert isinstance(opened, PostgresStore)
    yield opened
    opened.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def backends(store: PostgresStore) -> set[int]:
    """The server's process ids of the store's idle pooled connections (white box)."""
    return {conn.info.backend_pid for conn in store._pool._pool}


def fork(work: Callable[[], Any], go: int | None = None) -> tuple[int, int]:
    """Run `work` in a forked child, after a byte arrives on `go` if given; return the child's
    pid and the pipe its JSON report (or error) comes back on."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        report: Any
        try:
            wait_for(go)
            report = work()
        except BaseException as error:  # reported to the parent, which fails
            report = {"raised": f"{type(error).__name__}: {error}"}
        finally:
            os.write(write, json.dumps(report).encode())
            os._exit(0)
    os.close(write)
    return pid, read


def wait_for(go: int | None) -> None:
    """Wait up to `BOUND` seconds for a byte on `go`, if given."""
    if go is not None and not select.select([go], [], [], BOUND)[0]:
        raise TimeoutError("no start signal")


def collect(children: list[tuple[int, int]]) -> list[Any]:
    """Read every child's report and reap it, within `BOUND` seconds altogether."""
    deadline = time.monotonic() + BOUND
    reports = []
    try:
        for _, read in children:
            chunks = []
            while True:
                if not select.select([read], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError("a child did not report in time")
                chunk = os.read(read, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
            reports.append(json.loads(b"".join(chunks) or b"null"))
    finally:
        for pid, read in children:
            os.close(read)
            reap(pid, deadline)
    return reports


def reap(pid: int, deadline: float) -> None:
    """Wait for the child to exit until `deadline`, then kill it."""
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:  # pragma: no cover - a stuck child
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.01)


def own_keys(store: PostgresStore, scope: str) -> dict[str, Any]:
    """Claim, complete and replay `KEYS` keys of `scope`; report whatever was not its own."""
    wrong, errors = [], []
    for n in range(KEYS):
        key = f"order-{n}"
        identity, expected = ident(scope, key), outcome(scope, key)
        try:
            claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
            if not claim.acquired:
                wrong.append(f"{key}: not acquired, found {claim.record.outcome!r}")
                continue
            done = store.complete(identity, claim.token, expected, retention=RETENTION)
            replay = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
            record = store.get(identity)
            got = [done.outcome, replay.record.outcome, record and record.outcome]
            if replay.acquired or got != [expected] * 3:
                wrong.append(f"{key}: got {got!r}")
        except Exception as error:  # every failure is reported
            errors.append(f"{key}: {type(error).__name__}: {error}")
    return {"wrong": wrong, "errors": errors}


def test_b35_forked_children_each_get_their_own_outcomes(store: PostgresStore) -> None:
    """Children forked after the parent used the store claim, complete and replay their own
    keys at once, and the parent goes on meanwhile: nobody gets another scope's outcome or an
    error, and the parent's store still claims and replays afterwards."""
    parent = ident("parent", "order-0")
    claim = store.claim(parent, "fp", lease=LEASE, retention=RETENTION)
    store.complete(parent, claim.token, outcome("parent", "order-0"), retention=RETENTION)
    go_read, go_write = os.pipe()
    try:
        children = [
            fork(lambda scope=f"child-{n}": own_keys(store, scope), go_read)
            for n in range(CHILDREN)
        ]
        os.write(go_write, b"x" * CHILDREN)  # every child starts at once...
        mine = own_keys(store, "parent-meanwhile")  # ...and the parent works meanwhile
        reports = collect(children)
    finally:
        os.close(go_read)
        os.close(go_write)

    assert reports == [{"wrong": [], "errors": []}] * CHILDREN
    assert mine == {"wrong": [], "errors": []}
    for n in range(CHILDREN):  # nothing leaked across keys or scopes in the table either
        for key in (f"order-{k}" for k in range(KEYS)):
            record = store.get(ident(f"child-{n}", key))
            assert record is not None
            assert record.outcome == outcome(f"child-{n}", key)
    replay = store.claim(parent, "fp", lease=LEASE, retention=RETENTION)
    assert not replay.acquired
    assert replay.record.outcome == outcome("parent", "order-0")
    assert own_keys(store, "parent-after") == {"wrong": [], "errors": []}


def test_a_forked_child_neither_uses_nor_closes_the_parents_connections(
    store: PostgresStore,
) -> None:
    """A child opens connections of its own (other server processes); closing its store, and
    exiting, leaves the parent's connections open, the same sessions, still answering."""
    claim = store.claim(ident("parent", "held"), "fp", lease=LEASE, retention=RETENTION)
    parents = backends(store)
    assert parents

    def child() -> dict[str, Any]:
        report = own_keys(store, "child")
        report["shared"] = sorted(backends(store) & parents)
        store.close()  # must close its own connections only
        return report

    (report,) = collect([fork(child)])
    assert report == {"wrong": [], "errors": [], "shared": []}
    assert backends(store) == parents
    assert not any(conn.closed for conn in store._pool._pool)
    record = store.complete(ident("parent", "held"), claim.token, b"done", retention=RETENTION)
    assert record.outcome == b"done"
    assert store.get(ident("child", "order-0")) is not None
