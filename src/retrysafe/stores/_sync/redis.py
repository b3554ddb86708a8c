# Generated from stores/_async/redis.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The Redis store: production, many app instances sharing one Redis; shared, fast, TTL-native."""

from __future__ import annotations

import contextlib
from typing import Any, Unpack, cast
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.exceptions import RedisError

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import monotonic
from retrysafe._errors import ConfigurationError, FencedError, StoreError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores._sync import redis_admin as admin
from retrysafe.stores._deletes import RedisDeletes
from retrysafe.stores._redis_executors import sync_executor
from retrysafe.stores.base import (
    RECORD_FIELDS,
    Listing,
    ListingOptions,
    StoreStats,
    decode_part,
    encode_part,
    new_token,
    query_options,
)

__all__ = ["RedisStore"]

_OPTIONS: dict[str, type] = {
    "prefix": str,
    "socket_timeout": float,
    "connect_timeout": float,
    "autopipeline": bool,
}


class RedisStore:
    """A store in Redis: one hash per record, one Lua script per primitive.

    `list_records`, `stats` and `purge_expired` SCAN the store's keys: O(records), for admin use.

    Args:
        client: the redis-py client, created with `decode_responses=False`.
        prefix: what every key of this store starts with.
        clock: the time source for leases and retention.
        owns_client: whether `close` closes `client` (true when built by `from_url`).
        autopipeline: send the commands that concurrent calls issue in one event-loop turn as
            one pipeline on one connection of the store's own (the async face only: the sync
            store sends each command on its own).
    """

    _recheck_every = 0.5
    """The longest a waiter sleeps between reads of the record, should a message be missed."""

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str = "retrysafe",
        clock: Clock | None = None,
        owns_client: bool = False,
        autopipeline: bool = True,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError("The Redis store needs a client with decode_responses=False.")
        self.clock: Clock = clock or SystemClock()
        self._redis = client
        self._keys = lua.KeySpace(prefix)
        self._owns_client = owns_client
        self._commands = sync_executor(client, autopipeline=autopipeline)
        self._claim = client.register_script(lua.CLAIM)
        self._complete = client.register_script(lua.COMPLETE)
        self._release = client.register_script(lua.RELEASE)
        self._renew = client.register_script(lua.RENEW)
        self._checkpoint = client.register_script(lua.CHECKPOINT)
        self._watch = client.register_script(lua.WATCH)
        self._delete = client.register_script(lua.DELETE)
        self._deletes: RedisDeletes | None = None  # set by `from_url`, which has the URL
        self._purge = client.register_script(lua.PURGE)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisStore:
        """Build the store from `redis://host:6379/0` or `rediss://...`.

        Query options: `prefix` (default `retrysafe`), `socket_timeout` and `connect_timeout`
        (seconds, default 5): every primitive answers or fails within them (auto-pipelined, it
        may first wait for the batch in flight); `autopipeline` (default true; async face only).
        """
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigurationError(f"A Redis store URL is redis:// or rediss://, not {url!r}.")
        options = query_options(parts.query, _OPTIONS)
        socket_timeout = cast(float, options.get("socket_timeout", 5.0))
        connect_timeout = cast(float, options.get("connect_timeout", 5.0))
        if not (socket_timeout > 0 and connect_timeout > 0):
            raise ConfigurationError(f"Redis store timeouts must be positive seconds: {url!r}")
        try:
            client = Redis.from_url(
                urlunsplit(parts._replace(query="")),
                decode_responses=False,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                # One attempt per primitive: a retried claim could find its own lost claim in
                # flight, and the bound on a failure is the timeouts above, not a multiple.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as error:
            raise ConfigurationError(f"Invalid Redis store URL {url!r}: {error}") from None
        prefix = cast(str, options.get("prefix", "retrysafe"))
        autopipeline = cast(bool, options.get("autopipeline", True))
        store = cls(client, prefix=prefix, clock=clock, owns_client=True, autopipeline=autopipeline)
        store._deletes = RedisDeletes(
            urlunsplit(parts._replace(query="")), store._keys.deleted, timeout=connect_timeout
        )
        return store

    def delete_announcements(self) -> RedisDeletes | None:
        """Return what subscribes to this store's deletes (its `<prefix>:deleted` channel),
        for a replay cache in front of it; None for a store built from a client, whose URL
        it does not know."""
        return self._deletes

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        now = self.clock.now()
        token = new_token()
        lease_expires_at = now + lease
        expires_at = lease_expires_at + retention
        reply = self._run(
            self._claim,
            self._keys.key(identity),
            now,
            encode_part(fingerprint),
            token,
            lease_expires_at,
            expires_at,
            encode_part(identity.namespace),
            encode_part(identity.scope),
            encode_part(identity.key),
            lua.physical_ttl(expires_at, now),
        )
        if not reply[0]:
            return Claim(lua.record_from_values(reply[1], identity), acquired=False)
        taken_over = len(reply) > 1
        record = Record(
            identity=identity,
            fingerprint=fingerprint,
            state=State.IN_FLIGHT,
            token=token,
            created_at=float(reply[1]) if taken_over else now,
            lease_expires_at=lease_expires_at,
            expires_at=expires_at,
            recovery_point=None if not taken_over or reply[2] is None else decode_part(reply[2]),
        )
        return Claim(record, acquired=True, taken_over=taken_over)

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; wake its waiters."""
        key = self._keys.key(identity)
        now = self.clock.now()
        expires_at = now + retention
        reply = self._run(
            self._complete,
            key,
            now,
            token,
            outcome,
            expires_at,
            self._keys.channel(key),
            lua.physical_ttl(expires_at, now),
        )
        return _held_record(self._held(reply), identity, token, State.DONE, outcome)

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record so a retry runs again; wake its waiters."""
        key = self._keys.key(identity)
        reply = self._run(
            self._release, key, self.clock.now(), token, self._keys.channel(key)
        )
        self._held(reply)

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease to `lease` seconds from now."""
        now = self.clock.now()
        reply = self._run(self._renew, self._keys.key(identity), now, token, now + lease)
        return _held_record(self._held(reply), identity, token, State.IN_FLIGHT)

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase of a multi-phase operation."""
        reply = self._run(
            self._checkpoint,
            self._keys.key(identity),
            self.clock.now(),
            token,
            encode_part(recovery_point),
        )
        return _held_record(self._held(reply), identity, token, State.IN_FLIGHT)

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None (one HMGET; retention checked against the clock)."""
        with lua.translate_errors():
            values = self._commands.hmget(self._keys.key(identity), RECORD_FIELDS)
        return self._live(values, identity)

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; wake its waiters."""
        keys = self._keys
        key = keys.key(identity)
        deleted = self._run(
            self._delete, key, keys.channel(key), keys.deleted, identity.digest()
        )
        return bool(deleted)

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention, SCANning in batches."""
        now = self.clock.now()
        with lua.translate_errors():
            return admin.purge_expired(
                self._redis, self._keys, self._purge, now=now, limit=limit
            )

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first (SCAN: O(records))."""
        now = self.clock.now()
        with lua.translate_errors():
            return admin.list_records(
                self._redis,
                self._keys,
                Listing(**filters),
                now=now,
            )

    def stats(self) -> StoreStats:
        """Return counts of live records (SCAN: O(records); outcomes are sized, not read)."""
        now = self.clock.now()
        with lua.translate_errors():
            return admin.stats(self._redis, self._keys, now=now)

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait for the record's completion or release, announced on its pub/sub channel.

        Subscribes first, then reads the record and marks it watched (so its completion
        publishes), so a completion between the two is seen; reads again when woken, when the
        lease would expire, and every `_recheck_every` seconds.
        """
        if timeout <= 0:
            return self.get(identity)
        deadline = monotonic() + timeout
        key = self._keys.key(identity)
        channel = self._keys.channel(key)
        # redis-py types one face's pubsub() and the other's close(): hence the ignores.
        pubsub = self._redis.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
        subscribed = False
        try:
            with lua.translate_errors():
                pubsub.subscribe(channel)
                subscribed = True
                # The confirmation: from here on, a completion is published to this waiter.
                pubsub.get_message(timeout=timeout)
                while True:
                    record = self._live(self._run(self._watch, key), identity)
                    now = self.clock.now()
                    if (
                        record is None
                        or record.state is not State.IN_FLIGHT
                        or record.lease_expires_at <= now
                    ):
                        return record
                    remaining = deadline - monotonic()
                    if remaining <= 0:
                        return record
                    pause = min(remaining, record.lease_expires_at - now, self._recheck_every)
                    pubsub.get_message(ignore_subscribe_messages=True, timeout=pause)
        finally:
            if subscribed:
                with contextlib.suppress(RedisError, OSError):
                    # redis-py 8 left the sync PubSub.unsubscribe's parameters unannotated, so
                    # mypy calls it untyped there; the async one is typed (hence unused-ignore).
                    pubsub.unsubscribe()  # type: ignore[no-untyped-call, unused-ignore]
            pubsub.close()  # type: ignore[no-untyped-call, unused-ignore]

    def close(self) -> None:
        """Close the executor's own connection, if any, and the client if the store created it."""
        try:
            self._commands.close()
        finally:
            if self._owns_client:
                self._redis.close()

    def _run(self, script: Script, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA (loaded first if Redis does not know it)."""
        with lua.translate_errors():
            return self._commands.evalsha(script, key, *args)

    def _live(self, values: list[bytes | None], identity: Identity) -> Record | None:
        """Return the record from `RECORD_FIELDS` values, or None if absent or past retention."""
        if values[5] is None:
            if any(value is not None for value in values):
                raise StoreError("A Redis record is malformed (no expires_at); delete it.")
            return None
        record = lua.record_from_values(values, identity)
        return record if record.expires_at > self.clock.now() else None

    @staticmethod
    def _held(reply: list[Any]) -> list[Any]:
        """Return a holder-only script's fields, or raise `FencedError` if the caller lost."""
        if reply[0] != 1:
            raise FencedError(lua.fenced_message())
        return reply[1:]


def _held_record(
    fields: list[Any], identity: Identity, token: str, state: State, outcome: bytes | None = None
) -> Record:
    """Return the caller's record from the fields a holder-only script returns (`_redis_lua`)."""
    fingerprint, created_at, lease_expires_at, expires_at, recovery_point = fields
    return Record(
        identity=identity,
        fingerprint=decode_part(fingerprint),
        state=state,
        token=token,
        created_at=float(created_at),
        lease_expires_at=float(lease_expires_at),
        expires_at=float(expires_at),
        outcome=outcome,
        recovery_point=None if recovery_point is None else decode_part(recovery_point),
    )
