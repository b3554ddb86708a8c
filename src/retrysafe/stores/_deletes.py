"""Deletes announced by a store and heard by the replay caches of every process.

A replay cache (`stores/_async/cached.py`) answers replays from memory, so a record deleted
elsewhere (`retrysafe keys delete` on another machine) must stop being answered there. The
Redis and PostgreSQL stores announce every delete on a channel of their own, in the same script
or statement as the delete (Redis `PUBLISH`, PostgreSQL `pg_notify`), carrying the record's id,
`Identity.digest()`. A `DeleteListener`, one daemon thread per cache, subscribes and tells the
cache, which drops that record.

A subscription that breaks may have missed announcements. So the cache answers from memory only
while its listener is subscribed: it is emptied when the subscription is lost, answers nothing
from memory until the listener has subscribed again, and is emptied once more then. A forked
child has no listener thread: its caches stop answering from memory until they start their own.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Final, Protocol

from retrysafe._concurrency import monotonic
from retrysafe.stores._closing import closed_on_error

__all__ = [
    "FORKS",
    "LISTENER_NAME",
    "DeleteListener",
    "Invalidated",
    "PostgresDeletes",
    "RedisDeletes",
    "Subscription",
]

logger = logging.getLogger("retrysafe.stores")

_POLL: Final = 1.0  # seconds a receive waits, so that `close` is seen within that
_BACKOFF_FIRST, _BACKOFF_MOST = 0.1, 5.0  # seconds between attempts to subscribe again


class _Forks:
    """How many times this process is a fork's child: a cache compares it on each read,
    cheaper than `os.getpid()`, to see that its listener thread stayed in the parent."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def forked(self) -> None:
        self.count += 1


FORKS: Final = _Forks()
os.register_at_fork(after_in_child=FORKS.forked)


class Subscription(Protocol):
    """A live subscription to a store's delete announcements."""

    def receive(self, timeout: float) -> list[str]:
        """Return the ids announced since the last call, waiting up to `timeout` seconds for
        one; raise if the subscription is broken (announcements may have been missed)."""
        ...

    def close(self) -> None:
        """Unsubscribe and close the connection."""
        ...


class Invalidated(Protocol):
    """What a listener tells: the cache in front of the store."""

    def forget_id(self, record_id: str) -> None:
        """The record with this id (`Identity.digest()`) was deleted."""
        ...

    def subscribed(self, live: bool) -> None:
        """The listener has just subscribed (True) or lost its subscription (False)."""
        ...


class DeleteListener:
    """A daemon thread that keeps a subscription to a store's deletes and tells `target`.

    Holds `target` weakly: a cache nobody uses any more ends its listener. `start` is called
    again after a fork (the child has no thread): see `ensure_running`.

    Args:
        subscribe: opens a subscription (a connection of its own); raises if it cannot.
        target: the cache to tell.
        name: the thread's name.
    """

    def __init__(
        self, subscribe: Callable[[], Subscription], target: Invalidated, *, name: str
    ) -> None:
        self._subscribe = subscribe
        self._target = weakref.ref(target)
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def ensure_running(self) -> None:
        """Start the thread unless it runs in this process (a fork's child starts its own)."""
        if self._stop.is_set() or (self._thread is not None and self._pid == os.getpid()):
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2 * _POLL) -> None:
        """Stop the thread (it sees the request within a second) and wait for it that long."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                subscription = self._subscribe()
            except Exception as error:  # the store is down: try again, slower each time
                logger.debug("Cannot subscribe to the store's deletes: %s", error)
                self._stop.wait(backoff)
                backoff = min(2 * backoff, _BACKOFF_MOST)
                continue
            backoff = _BACKOFF_FIRST
            try:
                if not self._tell(True):
                    return
                while not self._stop.is_set():
                    announced = subscription.receive(_POLL)
                    cache = self._target()
                    if cache is None:  # nobody uses the cache any more: end with it
                        self._stop.set()
                        return
                    for record_id in announced:
                        cache.forget_id(record_id)
            except Exception as error:
                logger.warning(
                    "The replay cache lost its subscription to the store's deletes (%s); it"
                    " answers from the store until it is subscribed again",
                    error,
                )
            finally:
                self._tell(False)
                subscription.close()

    def _tell(self, live: bool) -> bool:
        """Tell the cache whether it is subscribed; False once the cache is gone."""
        cache = self._target()
        if cache is None:
            self._stop.set()
            return False
        cache.subscribed(live)
        return True


LISTENER_NAME: Final = "retrysafe-deletes"
"""The client name (Redis) and application name (PostgreSQL) of a listener's connection."""
_HEALTH_CHECK: Final = 10.0  # seconds between pings of a quiet subscription: finds a dead link
_PING: Final = "retrysafe-deletes"  # the message of a Redis subscription's own PING


class RedisDeletes:
    """Subscribes to a Redis store's delete channel (`PUBLISH` by its delete script).

    Args:
        url: the Redis URL, without retrysafe's options.
        channel: the channel the store announces deletes on.
        timeout: the socket and connect timeout, seconds.
    """

    def __init__(self, url: str, channel: bytes, *, timeout: float) -> None:
        self._url, self._channel, self._timeout = url, channel, timeout

    def __call__(self) -> Subscription:
        """Subscribe, and return once the server has confirmed it."""
        import redis  # noqa: PLC0415 - the redis extra is there: the store runs on it
        from redis.backoff import NoBackoff  # noqa: PLC0415
        from redis.retry import Retry  # noqa: PLC0415

        client = redis.Redis.from_url(
            self._url,
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            health_check_interval=_HEALTH_CHECK,
            client_name=LISTENER_NAME,
            retry=Retry(NoBackoff(), 0),  # a broken link is reported, never papered over
        )
        subscription = _RedisSubscription(client, client.pubsub(), self._timeout)
        with closed_on_error(subscription):
            subscription.subscribe(self._channel, self._timeout)
        return subscription


class _RedisSubscription:
    def __init__(self, client: Any, pubsub: Any, timeout: float) -> None:
        self._client, self._pubsub = client, pubsub
        self._reconnected = False
        # redis-py's own health check sends a PING but never misses its PONG: a link that
        # stalls (no reset) would leave the cache answering from memory, deaf to deletes. So
        # a quiet subscription sends a PING of its own, whose PONG must come within `timeout`.
        self._timeout = timeout
        self._quiet = 0.0
        self._pinged: float | None = None  # when the PING awaiting its PONG was sent

    def subscribe(self, channel: bytes, timeout: float) -> None:
        self._pubsub.subscribe(channel)
        confirmed = self._pubsub.get_message(timeout=timeout)
        if confirmed is None or confirmed["type"] != "subscribe":
            raise ConnectionError(f"Redis did not confirm the subscription: {confirmed!r}")
        # redis-py reconnects a pub/sub connection and subscribes again by itself, silently:
        # what was announced in between is lost, so a reconnection counts as a broken link.
        self._pubsub.connection.register_connect_callback(self._on_reconnect)

    def _on_reconnect(self, connection: Any) -> None:
        self._reconnected = True

    def receive(self, timeout: float) -> list[str]:
        if self._reconnected:
            raise ConnectionError("reconnected: deletes announced meanwhile were missed")
        if self._pinged is not None and monotonic() - self._pinged > self._timeout:
            raise ConnectionError(f"no answer to a PING within {self._timeout:g} s: stalled")
        message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if message is None:
            self._quiet += timeout
            if self._quiet >= _HEALTH_CHECK and self._pinged is None:
                self._pubsub.ping(_PING)
                self._pinged = monotonic()
            return []
        self._quiet = 0.0
        if message["type"] == "pong":
            self._pinged = None
            return []
        if message["type"] != "message":
            return []
        return [bytes(message["data"]).decode("ascii", "replace")]

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


class PostgresDeletes:
    """LISTENs on a PostgreSQL store's delete channel (`pg_notify` in its delete statement).

    Args:
        conninfo: the connection string.
        channel: the channel the store announces deletes on.
        timeout: the connect timeout, and the bound on a health check's reply, seconds.
    """

    def __init__(self, conninfo: str, channel: str, *, timeout: float) -> None:
        self._conninfo, self._channel, self._timeout = conninfo, channel, timeout

    def __call__(self) -> Subscription:
        """Connect and LISTEN; return once the LISTEN is in effect."""
        import psycopg  # noqa: PLC0415 - the postgres extra is there: the store runs on it
        from psycopg import sql  # noqa: PLC0415

        connection = psycopg.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self._timeout)),
            application_name=LISTENER_NAME,
        )
        with closed_on_error(connection):
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return _PostgresSubscription(connection, self._timeout)


class _PostgresSubscription:
    def __init__(self, connection: Any, timeout: float) -> None:
        from retrysafe.stores._sql.postgres_deadline import ReadDeadline  # noqa: PLC0415

        self._connection = connection
        self._quiet = 0.0
        # A server or link that stalls (no reset) would hold the check below for ever, and the
        # cache would go on answering from memory, deaf to deletes: the check gets `timeout`.
        self._deadline = ReadDeadline(timeout)

    def receive(self, timeout: float) -> list[str]:
        ids = [n.payload for n in self._connection.notifies(timeout=timeout, stop_after=64)]
        self._quiet = 0.0 if ids else self._quiet + timeout
        if self._quiet >= _HEALTH_CHECK:  # a link that died silently raises here
            armed = self._deadline.arm(self._connection)
            try:
                self._connection.execute("SELECT 1")
            finally:
                self._deadline.disarm(armed)
            self._quiet = 0.0
        return ids

    def close(self) -> None:
        self._deadline.close()
        self._connection.close()
