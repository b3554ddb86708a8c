"""Recent replays and mismatches, recorded in the store for the console: `EventRecorder`.

    from retrysafe.observe.events import EventRecorder

    recorder = EventRecorder("sqlite:///idempotency.db")  # the app's own store
    app = IdempotencyMiddleware(app, store=store, observers=[recorder])

The store keeps one record per key, not a log of the requests that reused it, so the console
(another process) cannot see replays and mismatches unless something writes them down. The
recorder does: each recorded decision becomes a small record of its own in the namespace
`retrysafe.events` (`EVENTS_NAMESPACE`), under a fresh key, claimed and completed at once, its
outcome a JSON document (`Event`): when, the face, the namespace, key and scope digest of the
operation, and the decision. Event records are kept for `retention` seconds (an hour by
default), so expiry hides them and a purge deletes them like any other record.

Observers run inline on the request's thread or event loop, so `decided` never touches the
store: it puts the event on a bounded queue and returns. One daemon thread writes the queue
with a sync store. A full queue drops the event and counts it (`stats().dropped`); so does a
write that fails (`failed`, logged once per run of failures on the `retrysafe.events` logger).
At most `max_per_minute` events are written (the rest are counted as `throttled`), which bounds
the event records live at once to `max_per_minute * retention / 60`. `flush` waits for the
queue to be written; `close` (registered with `atexit`) flushes and stops the thread. A forked
child (gunicorn's `--preload`) starts a writer of its own, with an empty queue and counts.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import json
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Final

from retrysafe._errors import ConfigurationError
from retrysafe._record import Identity
from retrysafe.observe import DECISIONS, Observer, Operation
from retrysafe.stores import Store, open_store

__all__ = [
    "EVENTS_NAMESPACE",
    "RECORDED",
    "Event",
    "EventRecorder",
    "RecorderStats",
    "read_events",
]

EVENTS_NAMESPACE: Final = "retrysafe.events"
"""The namespace of event records; `keys` and the console leave it out of their listings."""
RECORDED: Final = ("replay", "mismatch", "in_flight")
"""The decisions recorded by default: replays, mismatches, and conflicts (409, in flight)."""
_SCOPE: Final = "-"
_FINGERPRINT: Final = "event"
_LEASE: Final = 30.0
_LOGGER: Final = logging.getLogger("retrysafe.events")


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded decision, as its record's outcome holds it.

    Attributes:
        at: when it was decided, in seconds since the epoch.
        face: where the operation came in (`retrysafe.observe.FACES`).
        namespace, key: the operation's, as the client sent the key.
        scope: `retrysafe.observe.scope_digest` of its scope, never the scope itself.
        decision: `replay`, `mismatch`, `in_flight` (or another of `DECISIONS` if asked for).
    """

    at: float
    face: str
    namespace: str
    key: str
    scope: str
    decision: str

    def to_json(self) -> bytes:
        """Return the event as the UTF-8 JSON document stored as its record's outcome."""
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8", "surrogatepass")

    @classmethod
    def from_json(cls, data: bytes) -> Event:
        """Return the event stored as `data`; raise `ValueError` if it is not one."""
        try:
            event = cls(**json.loads(data))
            _check_types(event)
        except (TypeError, ValueError) as error:
            raise ValueError(f"Not an event record: {error}") from None
        return event


def _check_types(event: Event) -> None:
    texts = (event.face, event.namespace, event.key, event.scope, event.decision)
    if isinstance(event.at, bool) or not isinstance(event.at, int | float):
        raise TypeError("its time is not a number")
    if not all(isinstance(text, str) for text in texts):
        raise TypeError("a field is not a string")


def _check_settings(
    decisions: frozenset[str], retention: float, queue_size: int, max_per_minute: int
) -> None:
    unknown = sorted(decisions - set(DECISIONS))
    if unknown:
        raise ConfigurationError(
            f"EventRecorder: unknown decisions {', '.join(unknown)}; use some of "
            f"{', '.join(DECISIONS)}."
        )
    for name, value, valid, shown in (
        ("retention", retention, retention > 0, "more than 0"),
        ("queue_size", queue_size, queue_size >= 1, "at least 1"),
        ("max_per_minute", max_per_minute, max_per_minute >= 1, "at least 1"),
    ):
        if not valid:
            raise ConfigurationError(f"EventRecorder: {name} must be {shown}, not {value!r}.")


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """What a recorder did with the events it was given.

    Attributes:
        written: events stored.
        dropped: events dropped because the queue was full (or the recorder closed).
        throttled: events not stored because `max_per_minute` were already stored that minute.
        failed: events whose write the store refused or failed.
        queued: events waiting to be written now.
    """

    written: int
    dropped: int
    throttled: int
    failed: int
    queued: int


_RECORDERS: Final[weakref.WeakSet[EventRecorder]] = weakref.WeakSet()


def _after_fork() -> None:
    for recorder in list(_RECORDERS):
        recorder._forked()


os.register_at_fork(after_in_child=_after_fork)


def read_events(store: Store, limit: int = 50) -> list[Event]:
    """Return the newest `limit` events in `store`, newest first.

    Records that are not readable events (an outcome encrypted with keys this store was not
    opened with, or written by something else) are left out.
    """
    records = store.list_records(namespace=EVENTS_NAMESPACE, limit=limit)
    events = []
    for record in records:
        try:
            events.append(Event.from_json(record.outcome or b""))
        except ValueError:
            continue
    return sorted(events, key=lambda event: event.at, reverse=True)


class EventRecorder(Observer):
    """An observer that records replays and mismatches in a store, for the console.

    Args:
        store: the store to record in: a URL (opened here with `open_store`, closed by `close`),
            or a sync store you opened and close yourself. Give the app's own store, so the
            console over it shows the events.
        retention: seconds each event record is kept.
        decisions: which decisions to record (`RECORDED` by default).
        queue_size: events waiting at most; more are dropped and counted.
        max_per_minute: events stored at most per minute; more are counted as throttled.
    """

    def __init__(
        self,
        store: str | Store,
        *,
        retention: float = 3600.0,
        decisions: Iterable[str] = RECORDED,
        queue_size: int = 1000,
        max_per_minute: int = 100,
    ) -> None:
        self._decisions = frozenset(decisions)
        _check_settings(self._decisions, retention, queue_size, max_per_minute)
        if inspect.iscoroutinefunction(getattr(store, "claim", None)):
            raise ConfigurationError(
                "EventRecorder: give it a sync store (retrysafe.open_store(url)) or the store's "
                "URL, not an async store: it writes from a thread of its own."
            )
        self.retention = retention
        self.max_per_minute = max_per_minute
        self._owned = isinstance(store, str)
        self._store = open_store(store) if isinstance(store, str) else store
        self._queue_size = queue_size
        self._closed = False
        self._minute, self._in_minute = -1, 0
        self._start()
        _RECORDERS.add(self)
        atexit.register(self.close)

    def _start(self) -> None:
        """Start the writer thread with an empty queue and counts (again in a forked child,
        which has none of its parent's threads: its own events are then written)."""
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=self._queue_size)
        self._lock = threading.Lock()
        self._counts = {"written": 0, "dropped": 0, "throttled": 0, "failed": 0}
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="retrysafe-events", daemon=True)
        self._thread.start()

    def _forked(self) -> None:
        """In a forked child (gunicorn's `--preload`), start a writer of its own."""
        if not self._closed:
            self._start()

    def decided(self, operation: Operation) -> None:
        """Queue the operation's event if its decision is recorded; never block."""
        decision = operation.decision
        if decision is None or decision not in self._decisions:
            return
        event = Event(
            at=time.time(),
            face=operation.face,
            namespace=operation.namespace,
            key=operation.key,
            scope=operation.scope,
            decision=decision,
        )
        if self._closed:
            self._count("dropped")
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._count("dropped")

    def stats(self) -> RecorderStats:
        """Return how many events were written, dropped, throttled, failed, and are queued."""
        with self._lock:
            counts = dict(self._counts)
        return RecorderStats(**counts, queued=self._queue.qsize())

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is written (or dropped); return False on timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: self._queue.unfinished_tasks == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the thread, and close the store if it was opened here.

        Events decided afterwards are dropped. Calling it again does nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        atexit.unregister(self.close)
        if self._thread.is_alive():  # never wait on a writer that is gone
            self.flush(timeout)
            with contextlib.suppress(queue.Full):  # the writer is stuck: leave it behind
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        if self._owned and not self._thread.is_alive():
            self._store.close()

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _run(self) -> None:
        """The writer thread: write events until the `None` that `close` queues."""
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self._write(event)
            finally:
                self._queue.task_done()

    def _write(self, event: Event) -> None:
        minute = int(self._store.clock.now() // 60)  # the store's clock: tests can set it
        if minute != self._minute:
            self._minute, self._in_minute = minute, 0
        if self._in_minute >= self.max_per_minute:
            self._count("throttled")
            return
        self._in_minute += 1
        identity = Identity(EVENTS_NAMESPACE, _SCOPE, f"{event.decision}-{uuid.uuid4().hex}")
        try:
            claim = self._store.claim(
                identity, _FINGERPRINT, lease=_LEASE, retention=self.retention
            )
            self._store.complete(identity, claim.token, event.to_json(), retention=self.retention)
        except Exception as error:  # any store failure: count it, keep going
            self._count("failed")
            if not self._failing:
                _LOGGER.warning("Recording events failed: %s: %s", type(error).__name__, error)
            self._failing = True
            return
        self._failing = False
        self._count("written")
