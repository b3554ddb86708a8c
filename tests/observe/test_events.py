"""`EventRecorder`: replays, mismatches and conflicts written to a real store by one background
thread, a full queue dropped and counted without blocking, retention, throttling, failures, and
the `keys` commands leaving the event records out."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from typer.testing import CliRunner

from retrysafe import (
    KeyMismatchError,
    ManualClock,
    Store,
    idempotent,
    open_async_store,
    open_store,
)
from retrysafe._errors import ConfigurationError
from retrysafe.cli import app as cli
from retrysafe.observe import Operation
from retrysafe.observe.events import (
    EVENTS_NAMESPACE,
    Event,
    EventRecorder,
    read_events,
)
from tests.conftest import fresh_store_url

WAIT = 10.0  # seconds any wait for the writer thread may take, at most


@pytest.fixture
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite store's URL, the file made."""
    with fresh_store_url("sqlite", request, tmp_path) as url:
        open_store(url).close()
        yield url


def _operation(decision: str, key: str = "order-1") -> Operation:
    return Operation("asgi", namespace="payments", key=key, decision=decision)


class GatedStore:
    """A real store whose writes wait for `gate` to open, after setting `entered`: it holds
    the recorder's writer thread still for as long as a test needs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.clock = store.clock
        self.entered = threading.Event()
        self.gate = threading.Event()

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(WAIT), "the test never opened the gate"
        return self.store.claim(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_decorators_replay_and_mismatch_are_recorded_and_its_execution_is_not(
    store_url: str,
) -> None:
    """A decorated function run once, replayed once and called with other arguments under the
    same key leaves two events in the store, newest first: the mismatch, then the replay."""
    store = open_store(store_url)
    recorder = EventRecorder(store_url)
    try:

        @idempotent(store, key="order", namespace="charges", observers=[recorder])
        def charge(order: str, amount: int) -> int:
            return amount

        assert charge("order-1", 5) == charge("order-1", 5) == 5
        with pytest.raises(KeyMismatchError):
            charge("order-1", 6)
        assert recorder.flush(WAIT)
        events = read_events(store)
    finally:
        recorder.close()
        store.close()
    assert [e.decision for e in events] == ["mismatch", "replay"]
    assert {(e.face, e.namespace, e.key, e.scope) for e in events} == {
        ("decorator", "charges", "order-1", "")
    }
    assert events[0].at >= events[1].at
    assert (recorder.stats().written, recorder.stats().dropped) == (2, 0)


def test_conflicts_are_recorded_by_default_and_decisions_chooses_others(store_url: str) -> None:
    """`in_flight` (a 409) is recorded by default and `execute` is not; `decisions=` records
    exactly the decisions it names."""
    store = open_store(store_url)
    default, chosen = EventRecorder(store), EventRecorder(store, decisions=["execute"])
    try:
        for decision in ("execute", "in_flight", "invalid"):
            default.decided(_operation(decision, key=f"default-{decision}"))
            chosen.decided(_operation(decision, key=f"chosen-{decision}"))
        assert default.flush(WAIT)
        assert chosen.flush(WAIT)
        keys = sorted(e.key for e in read_events(store))
    finally:
        default.close()
        chosen.close()
        store.close()
    assert keys == ["chosen-execute", "default-in_flight"]


def test_a_full_queue_drops_and_counts_without_blocking_the_caller(store_url: str) -> None:
    """While the writer thread is held inside a store write, `decided` still returns at once:
    `queue_size` events wait, every further one is dropped and counted, and opening the gate
    writes the held and the queued ones."""
    gated = GatedStore(open_store(store_url))
    recorder = EventRecorder(cast(Store, gated), queue_size=3)
    try:
        recorder.decided(_operation("replay", key="held"))
        assert gated.entered.wait(WAIT)  # the writer took it and is held: the queue is empty
        returned = threading.Event()

        def decide_eight() -> None:
            for number in range(8):
                recorder.decided(_operation("replay", key=f"later-{number}"))
            returned.set()

        threading.Thread(target=decide_eight, daemon=True).start()
        assert returned.wait(WAIT), "decided() blocked on the full queue"
        assert not gated.gate.is_set()
        held = recorder.stats()
        gated.gate.set()
        assert recorder.flush(WAIT)
        keys = {event.key for event in read_events(gated.store)}
    finally:
        gated.gate.set()
        recorder.close()
        gated.store.close()
    assert (held.queued, held.dropped, held.written) == (3, 5, 0)
    assert keys == {"held", "later-0", "later-1", "later-2"}
    assert (recorder.stats().written, recorder.stats().dropped) == (4, 5)


def test_event_records_expire_after_the_retention_and_are_purged(store_url: str) -> None:
    """An event kept for 60 s is read until then, invisible after, and a purge deletes it."""
    clock = ManualClock()
    store = open_store(store_url, clock=clock)
    recorder = EventRecorder(store, retention=60)
    try:
        recorder.decided(_operation("mismatch"))
        assert recorder.flush(WAIT)
        assert [e.decision for e in read_events(store)] == ["mismatch"]
        clock.advance(61)
        assert read_events(store) == []
        assert store.purge_expired() == 1
    finally:
        recorder.close()
        store.close()


def test_at_most_max_per_minute_events_are_written_and_the_rest_counted(store_url: str) -> None:
    """With `max_per_minute=2`, five events in one minute of the store's clock write two and
    count three as throttled; the next minute writes again."""
    clock = ManualClock()
    store = open_store(store_url, clock=clock)
    recorder = EventRecorder(store, max_per_minute=2)
    try:
        for number in range(5):
            recorder.decided(_operation("replay", key=f"k-{number}"))
        assert recorder.flush(WAIT)
        clock.advance(60)
        recorder.decided(_operation("replay", key="next-minute"))
        assert recorder.flush(WAIT)
        stats = recorder.stats()
    finally:
        recorder.close()
        store.close()
    assert (stats.written, stats.throttled) == (3, 3)


def test_failed_writes_are_counted_and_logged_once_per_run(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Writes to a closed store fail: each is counted, and one warning says so, not one each."""
    store = open_store(store_url)
    store.close()
    recorder = EventRecorder(store)
    try:
        with caplog.at_level(logging.WARNING, logger="retrysafe.events"):
            recorder.decided(_operation("replay", key="a"))
            recorder.decided(_operation("replay", key="b"))
            assert recorder.flush(WAIT)
    finally:
        recorder.close()
    assert recorder.stats().failed == 2
    warnings = [r for r in caplog.records if r.name == "retrysafe.events"]
    assert len(warnings) == 1
    assert "is closed" in warnings[0].getMessage()


def test_after_close_events_are_dropped_and_close_again_does_nothing(store_url: str) -> None:
    """A closed recorder drops and counts what it is given; a second `close` is harmless."""
    recorder = EventRecorder(store_url)
    recorder.close()
    recorder.decided(_operation("replay"))
    recorder.close()
    assert (recorder.stats().dropped, recorder.stats().written) == (1, 0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decisions": ["replay", "retried"]}, "unknown decisions retried; use some of execute"),
        ({"retention": 0}, "retention must be more than 0, not 0"),
        ({"queue_size": 0}, "queue_size must be at least 1, not 0"),
        ({"max_per_minute": -1}, "max_per_minute must be at least 1, not -1"),
    ],
)
def test_bad_settings_are_refused(options: dict[str, Any], message: str) -> None:
    """An unknown decision or a retention, queue or rate below the minimum raises
    ConfigurationError, naming it, before any thread starts."""
    with pytest.raises(ConfigurationError, match=message):
        EventRecorder("memory://", **options)


def test_an_event_round_trips_and_other_outcomes_are_refused() -> None:
    """`Event.from_json` reads what `to_json` wrote, and refuses anything else with ValueError."""
    event = Event(1.5, "wsgi", "ns", "kéy\u202e", "ab12", "replay")
    assert Event.from_json(event.to_json()) == event
    for data in (b"old", b"[42]", b'{"at": "now"}', event.to_json().replace(b"1.5", b'"x"')):
        with pytest.raises(ValueError, match="Not an event record"):
            Event.from_json(data)


def test_keys_list_and_stats_leave_event_records_out_unless_asked(store_url: str) -> None:
    """`keys list` and `keys stats` show only the app's record; `keys list --namespace
    retrysafe.events` lists the events."""
    store = open_store(store_url)
    recorder = EventRecorder(store)
    try:

        @idempotent(store, key="order", namespace="charges", observers=[recorder])
        def charge(order: str) -> str:
            return order

        charge("order-1")
        charge("order-1")
        assert recorder.flush(WAIT)
    finally:
        recorder.close()
        store.close()
    runner = CliRunner(env={"COLUMNS": "200"})

    def keys(*args: str) -> Any:
        result = runner.invoke(cli, ["keys", *args, "--json", "--store", store_url])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    assert [r["namespace"] for r in keys("list")["records"]] == ["charges"]
    events = keys("list", "--namespace", EVENTS_NAMESPACE)["records"]
    assert [r["key"].split("-")[0] for r in events] == ["replay"]
    stats = keys("stats")
    assert (stats["in_flight"], stats["done"]) == (0, 1)


_FORKED = """
import json, os, sys, time
from retrysafe.observe import Operation
from retrysafe.observe.events import EventRecorder

recorder = EventRecorder(sys.argv[1])  # at import time, as under gunicorn --preload
pid = os.fork()
if pid == 0:
    for key in ("w-1", "w-2", "w-3"):
        recorder.decided(Operation("wsgi", namespace="payments", key=key, decision="replay"))
    flushed = recorder.flush(2.0)
    print(json.dumps({"flushed": flushed, "written": recorder.stats().written}), flush=True)
    sys.exit(0)  # atexit closes the recorder
began = time.monotonic()
_, status = os.waitpid(pid, 0)
print(json.dumps({"status": status, "exited_in": time.monotonic() - began}), flush=True)
recorder.close()
"""


def test_b40_a_recorder_made_before_a_fork_records_in_the_child_and_lets_it_exit(
    store_url: str,
) -> None:
    """A recorder made before `os.fork` (gunicorn's `--preload`): the child's events are
    written by a writer of its own, and its exit (B40: within a bound) does not wait on the
    parent's thread, which the child does not have."""
    done = subprocess.run(  # this interpreter, a script of the test's
        [sys.executable, "-c", _FORKED, store_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child, parent = (json.loads(line) for line in done.stdout.splitlines())
    assert child == {"flushed": True, "written": 3}
    assert parent["status"] == 0
    assert parent["exited_in"] < 5.0  # close() at exit waited on no dead thread (~20 s)
    store = open_store(store_url)
    try:
        assert sorted(event.key for event in read_events(store)) == ["w-1", "w-2", "w-3"]
    finally:
        store.close()


def test_b26_an_async_store_is_refused_naming_the_sync_one() -> None:
    """The recorder writes from a thread with a sync store (B26: each face its kind of
    store): an async one is refused at once, with ConfigurationError, instead of failing
    every write later."""
    store = open_async_store("memory://")
    with pytest.raises(ConfigurationError, match=r"sync store \(retrysafe.open_store\(url\)\)"):
        EventRecorder(store)  # type: ignore[arg-type]
