"""The SQLite store when its file is held, deleted or replaced, or its process forks mid-write.

Real files, a real second process holding the lock, real forks: each test names the behaviour
it keeps (B20: an unavailable store fails closed, within its timeout; the invariant: an effect
never runs twice for one key).
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from retrysafe import Identity, StoreUnavailableError
from retrysafe.stores.sqlite import AsyncSQLiteStore, SQLiteStore

LEASE = 30.0
RETENTION = 3600.0

_HOLDER = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()  # until the test closes stdin
connection.execute("ROLLBACK")
"""


def ident(key: str) -> Identity:
    return Identity("test", "tenant-a", key)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@contextlib.contextmanager
def held_by_another_process(db_path: Path) -> Iterator[None]:
    """Hold the database with BEGIN EXCLUSIVE in a second process until the block ends."""
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            stdout, stdin = holder.stdout, holder.stdin
            assert stdout is not None
            assert stdin is not None
            line: list[str] = []
            reader = threading.Thread(target=lambda: line.append(stdout.readline()))
            reader.start()
            reader.join(timeout=30)
            assert line == ["held\n"], "the holder did not take the lock"
            yield
            stdin.close()
            holder.wait(timeout=30)
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(timeout=30)


def test_b20_every_sync_write_answers_within_its_timeout_while_another_process_holds_the_file(
    db_path: Path,
) -> None:
    """Many threads of a threaded server writing while another process holds the file: each
    call fails with StoreUnavailableError within about its busy timeout (at most twice it,
    plus the commit's grace), instead of re-queueing on the process's write lock for as long
    as the other process holds it."""
    timeout = 0.25
    store = SQLiteStore(db_path, timeout=timeout)
    store.create_schema()
    durations: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    def writer(number: int, stop: float) -> None:
        index = 0
        while time.monotonic() < stop:
            started = time.monotonic()
            try:
                store.claim(ident(f"t{number}-{index}"), "fp", lease=LEASE, retention=RETENTION)
            except Exception as error:
                errors[type(error).__name__] += 1
            durations.append(time.monotonic() - started)
            index += 1

    try:
        with held_by_another_process(db_path):
            stop = time.monotonic() + 5
            threads = [threading.Thread(target=writer, args=(n, stop)) for n in range(24)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in threads)
    finally:
        store.close()
    assert set(errors) == {"StoreUnavailableError"}
    assert sum(errors.values()) == len(durations)
    assert max(durations) <= 3 * timeout + 1, sorted(durations)[-5:]


def test_b20_an_async_write_queued_behind_a_waiting_batch_waits_only_its_own_timeout(
    db_path: Path,
) -> None:
    """While another process holds the file, writes keep arriving at the async store: each is
    answered (StoreUnavailableError) about its own busy timeout after it was made, not after
    the batch ahead of it waited a full timeout and its own batch a second one."""
    timeout = 1.0
    durations: list[float] = []
    errors: collections.Counter[str] = collections.Counter()

    async def scenario() -> None:
        store = AsyncSQLiteStore(db_path, timeout=timeout)
        try:
            await store.create_schema()
            with held_by_another_process(db_path):
                stop = time.monotonic() + 4

                async def writer(number: int) -> None:
                    index = 0
                    while time.monotonic() < stop:
                        started = time.monotonic()
                        try:
                            await store.claim(
                                ident(f"a{number}-{index}"), "fp", lease=LEASE, retention=RETENTION
                            )
                        except Exception as error:
                            errors[type(error).__name__] += 1
                        durations.append(time.monotonic() - started)
                        index += 1
                        await anyio.sleep(0.05 * (number % 4))  # arrive at different moments

                with anyio.fail_after(60):
                    async with anyio.create_task_group() as group:
                        for number in range(8):
                            group.start_soon(writer, number)
        finally:
            await store.aclose()

    anyio.run(scenario)
    assert set(errors) == {"StoreUnavailableError"}
    assert sum(errors.values()) == len(durations)
    assert max(durations) <= timeout + 0.6, sorted(durations)[-5:]


def _remove(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{db_path}{suffix}")


def _replace(db_path: Path) -> None:
    """Rename another database over the path, as restoring a backup does."""
    other = db_path.with_name("restored.db")
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    os.replace(other, db_path)


_SECOND_PROCESS = """
import sys
from retrysafe import Identity
from retrysafe.stores.sqlite import SQLiteStore
store = SQLiteStore(sys.argv[1], timeout=1.0)
claim = store.claim(Identity("test", "tenant-a", "after"), "fp", lease=30.0, retention=3600.0)
print("acquired" if claim.acquired else "found", flush=True)
store.close()
"""


class _Face:
    """The sync store, or the async one run to completion on a fresh event loop per call."""

    def __init__(self, face: str, db_path: Path) -> None:
        self.face = face
        factory = SQLiteStore if face == "sync" else AsyncSQLiteStore
        self.store: Any = factory(db_path, timeout=1.0)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        call = getattr(self.store, method)
        if self.face == "sync":
            return call(*args, **kwargs)

        async def run() -> Any:
            return await call(*args, **kwargs)

        return anyio.run(run)

    def close(self) -> None:
        self("close" if self.face == "sync" else "aclose")


@pytest.mark.parametrize("face", ["sync", "async"])
@pytest.mark.parametrize(("change", "cause"), [(_remove, "deleted"), (_replace, "replaced")])
def test_b20_a_file_deleted_or_replaced_under_a_running_store_is_refused(
    db_path: Path, face: str, change: Callable[[Path], None], cause: str
) -> None:
    """Delete or replace the database file while a process has it open, then start a second
    process on the path: the key used after the change runs in the second process only. The
    first process refuses every call (StoreUnavailableError naming the cause) instead of
    claiming the key in the file only it still sees, which would run the effect twice."""
    store = _Face(face, db_path)
    try:
        assert store("claim", ident("before"), "fp", lease=LEASE, retention=RETENTION).acquired
        change(db_path)
        second = subprocess.run(
            [sys.executable, "-c", _SECOND_PROCESS, str(db_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert second.stdout.strip() == "acquired"
        for key in ("after", "later"):
            with pytest.raises(StoreUnavailableError, match=cause):
                store("claim", ident(key), "fp", lease=LEASE, retention=RETENTION)
        with pytest.raises(StoreUnavailableError, match=cause):
            store("get", ident("before"))
    finally:
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_b20_a_child_forked_while_the_parent_writes_can_write(db_path: Path) -> None:
    """Fork while another thread of the parent is inside a write transaction: the fork waits
    for that write to commit (the child sees it), and the child's own writes succeed. Forked
    mid-write, the child inherited SQLite's per-process lock state with the write lock held
    and every write it tried stayed busy for ever."""
    store = SQLiteStore(db_path, timeout=0.5)
    store.create_schema()
    inside, release = threading.Event(), threading.Event()

    def slow_write(connection: sqlite3.Connection, now: float) -> None:
        store.table.claim(
            connection, ident("in-flight"), "fp", now=now, lease=LEASE, retention=RETENTION
        )
        inside.set()
        release.wait(timeout=30)

    writer = threading.Thread(target=store._execute, args=(slow_write,), kwargs={"write": True})
    writer.start()
    try:
        assert inside.wait(timeout=30)
        # Let the write end a little later, whether or not the fork waits for it.
        threading.Timer(0.3, release.set).start()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child process
            verdict = b"error"
            try:
                seen = store.get(ident("in-flight")) is not None
                outcomes = []
                for attempt in range(2):
                    try:
                        claim = store.claim(
                            ident(f"child-{attempt}"), "fp", lease=LEASE, retention=RETENTION
                        )
                        outcomes.append("ok" if claim.acquired else "found")
                    except Exception as error:
                        outcomes.append(type(error).__name__)
                verdict = f"seen={seen} {outcomes}".encode()
            finally:
                os.write(write, verdict)
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            verdict = pipe.read()
        os.waitpid(pid, 0)
        assert verdict == b"seen=True ['ok', 'ok']"
    finally:
        release.set()
        writer.join(timeout=30)
        store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_b20_a_child_forked_while_the_async_writer_commits_can_write(db_path: Path) -> None:
    """As above for the async store: the fork waits for the writer thread's batch to commit."""
    store = AsyncSQLiteStore(db_path, timeout=0.5)
    inside, release = threading.Event(), threading.Event()

    def slow_write(connection: sqlite3.Connection, now: float) -> None:
        store.table.claim(
            connection, ident("in-flight"), "fp", now=now, lease=LEASE, retention=RETENTION
        )
        inside.set()
        release.wait(timeout=30)

    async def write_slowly() -> None:
        await store._runner.write(slow_write)

    writer = threading.Thread(target=anyio.run, args=(write_slowly,))
    writer.start()
    try:
        assert inside.wait(timeout=30)
        threading.Timer(0.3, release.set).start()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child process
            verdict = b"error"
            try:

                async def child() -> str:
                    seen = await store.get(ident("in-flight")) is not None
                    outcomes = []
                    for attempt in range(2):
                        try:
                            claim = await store.claim(
                                ident(f"child-{attempt}"), "fp", lease=LEASE, retention=RETENTION
                            )
                            outcomes.append("ok" if claim.acquired else "found")
                        except Exception as error:
                            outcomes.append(type(error).__name__)
                    await store.aclose()
                    return f"seen={seen} {outcomes}"

                verdict = anyio.run(child).encode()
            finally:
                os.write(write, verdict)
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as pipe:
            verdict = pipe.read()
        os.waitpid(pid, 0)
        assert verdict == b"seen=True ['ok', 'ok']"
    finally:
        release.set()
        writer.join(timeout=30)
        anyio.run(store.aclose)
