# Generated from stores/_async/redis.py by scripts/unasync.py; edit the source, not this.
"""The Redis store: production, many app instances sharing one Redis; shared, fast, TTL-native."""

from __future__ import annotations

import contextlib
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from retrysafe._clock import Clock, SystemClock
from retrysafe._concurrency import monotonic
from retrysafe._errors import ConfigurationError, FencedError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores.base import StoreStats, decode_part, encode_part, new_token, query_options

__all__ = ["RedisStore"]

_OPTIONS: dict[str, type] = {"prefix": str, "socket_timeout": float, "connect_timeout": float}
_SCAN_COUNT = 1000


class RedisStore:
    """A store in Redis: one hash per record, one Lua script per primitive.

    `list_records`, `stats` and `purge_expired` SCAN the store's keys: O(records), for admin use.

    Args:
        client: the redis-py client, created with `decode_responses=False`.
        prefix: what every key of this store starts with.
        clock: the time source for leases and retention.
        owns_client: whether `close` closes `client` (true when built by `from_url`).
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
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError("The Redis store needs a client with decode_responses=False.")
        self.clock: Clock = clock or SystemClock()
        self._redis = client
        self._keys = lua.KeySpace(prefix)
        self._owns_client = owns_client
        self._claim = client.register_script(lua.CLAIM)
        self._complete = client.register_script(lua.COMPLETE)
        self._release = client.register_script(lua.RELEASE)
        self._renew = client.register_script(lua.RENEW)
        self._checkpoint = client.register_script(lua.CHECKPOINT)
        self._delete = client.register_script(lua.DELETE)
        self._purge = client.register_script(lua.PURGE)

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisStore:
        """Build the store from `redis://host:6379/0` or `rediss://...`.

        Query options: `prefix` (default `retrysafe`), `socket_timeout` and `connect_timeout`
        (seconds, default 5): every primitive answers or fails within them.
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
        return cls(client, prefix=prefix, clock=clock, owns_client=True)

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record."""
        key = self._keys.key(identity)
        now = self.clock.now()
        token = new_token()
        lease_expires_at = now + lease
        expires_at = lease_expires_at + retention
        args = (
            now,
            encode_part(fingerprint),
            token,
            lease_expires_at,
            expires_at,
            encode_part(identity.namespace),
            encode_part(identity.scope),
            encode_part(identity.key),
        )
        with lua.translate_errors():
            reply = self._claim(keys=(key,), args=args)
        if not reply[0]:
            return Claim(lua.record_from_flat(reply[1], identity), acquired=False)
        _, taken_over, created_at, recovery_point = reply
        record = Record(
            identity=identity,
            fingerprint=fingerprint,
            state=State.IN_FLIGHT,
            token=token,
            created_at=float(created_at) if taken_over else now,
            lease_expires_at=lease_expires_at,
            expires_at=expires_at,
            recovery_point=None if recovery_point is None else decode_part(recovery_point),
        )
        return Claim(record, acquired=True, taken_over=bool(taken_over))

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; wake its waiters."""
        key = self._keys.key(identity)
        now = self.clock.now()
        expires_at = now + retention
        args = (now, token, outcome, expires_at, self._keys.channel(key))
        with lua.translate_errors():
            reply = self._complete(keys=(key,), args=args)
        fingerprint, created_at, recovery_point = self._held(reply)
        return Record(
            identity=identity,
            fingerprint=decode_part(fingerprint),
            state=State.DONE,
            token=token,
            created_at=float(created_at),
            lease_expires_at=now,
            expires_at=expires_at,
            outcome=outcome,
            recovery_point=None if recovery_point is None else decode_part(recovery_point),
        )

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record so a retry runs again; wake its waiters."""
        key = self._keys.key(identity)
        args = (self.clock.now(), token, self._keys.channel(key))
        with lua.translate_errors():
            reply = self._release(keys=(key,), args=args)
        self._held(reply)

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease to `lease` seconds from now."""
        now = self.clock.now()
        lease_expires_at = now + lease
        with lua.translate_errors():
            reply = self._renew(
                keys=(self._keys.key(identity),), args=(now, token, lease_expires_at)
            )
        fingerprint, created_at, expires_at, recovery_point = self._held(reply)
        return Record(
            identity=identity,
            fingerprint=decode_part(fingerprint),
            state=State.IN_FLIGHT,
            token=token,
            created_at=float(created_at),
            lease_expires_at=lease_expires_at,
            expires_at=float(expires_at),
            recovery_point=None if recovery_point is None else decode_part(recovery_point),
        )

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase of a multi-phase operation."""
        args = (self.clock.now(), token, encode_part(recovery_point))
        with lua.translate_errors():
            reply = self._checkpoint(keys=(self._keys.key(identity),), args=args)
        fingerprint, created_at, lease_expires_at, expires_at = self._held(reply)
        return Record(
            identity=identity,
            fingerprint=decode_part(fingerprint),
            state=State.IN_FLIGHT,
            token=token,
            created_at=float(created_at),
            lease_expires_at=float(lease_expires_at),
            expires_at=float(expires_at),
            recovery_point=recovery_point,
        )

    def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None (one HGETALL; retention checked against the clock)."""
        with lua.translate_errors():
            fields = self._redis.hgetall(self._keys.key(identity))
        if not fields:
            return None
        record = lua.record_from_fields(cast("dict[bytes, bytes]", fields), identity)
        return record if record.expires_at > self.clock.now() else None

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; wake its waiters."""
        key = self._keys.key(identity)
        with lua.translate_errors():
            deleted = self._delete(keys=(key,), args=(self._keys.channel(key),))
        return bool(deleted)

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention, SCANning in batches."""
        now = self.clock.now()
        purged = 0
        cursor = 0
        with lua.translate_errors():
            while purged < limit:
                cursor, keys = self._redis.scan(
                    cursor, match=self._keys.match, count=_SCAN_COUNT, _type="hash"
                )
                if keys:
                    reads = self._redis.pipeline(transaction=False)
                    for key in keys:
                        reads.hget(key, "expires_at")
                    expired = [
                        key
                        for key, expires_at in zip(keys, reads.execute(), strict=True)
                        if expires_at is not None and float(expires_at) <= now
                    ][: limit - purged]
                    if expired:
                        # Deleted one by one by a script that checks again: a record claimed
                        # anew since the read above is live and stays.
                        deletes = self._redis.pipeline(transaction=False)
                        for key in expired:
                            self._purge(keys=(key,), args=(now,), client=deletes)
                        purged += sum(deletes.execute())
                if cursor == 0:
                    break
        return purged

    def list_records(
        self,
        *,
        namespace: str | None = None,
        scope: str | None = None,
        state: State | None = None,
        created_before: float | None = None,
        limit: int = 100,
    ) -> list[Record]:
        """Return live records matching every given filter, newest first (SCAN: O(records))."""
        now = self.clock.now()
        matching: list[Record] = []
        cursor = 0
        with lua.translate_errors():
            while True:
                cursor, keys = self._redis.scan(
                    cursor, match=self._keys.match, count=_SCAN_COUNT, _type="hash"
                )
                if keys:
                    reads = self._redis.pipeline(transaction=False)
                    for key in keys:
                        reads.hgetall(key)
                    for fields in reads.execute():
                        if not fields:
                            continue  # expired or deleted since the SCAN
                        record = lua.record_from_fields(fields)
                        if (
                            record.expires_at > now
                            and (namespace is None or record.identity.namespace == namespace)
                            and (scope is None or record.identity.scope == scope)
                            and (state is None or record.state is state)
                            and (created_before is None or record.created_at < created_before)
                        ):
                            matching.append(record)
                if cursor == 0:
                    break
        matching.sort(key=lambda r: r.created_at, reverse=True)
        return matching[:limit]

    def stats(self) -> StoreStats:
        """Return counts of live records (SCAN: O(records); outcomes are sized, not read)."""
        now = self.clock.now()
        in_flight: list[float] = []
        done = 0
        bytes_stored = 0
        cursor = 0
        with lua.translate_errors():
            while True:
                cursor, keys = self._redis.scan(
                    cursor, match=self._keys.match, count=_SCAN_COUNT, _type="hash"
                )
                if keys:
                    reads = self._redis.pipeline(transaction=False)
                    for key in keys:
                        reads.hmget(key, ["state", "created_at", "expires_at"])
                        reads.hstrlen(key, "outcome")
                    replies = reads.execute()
                    for (state, created_at, expires_at), size in zip(
                        replies[::2], replies[1::2], strict=True
                    ):
                        if expires_at is None or float(expires_at) <= now:
                            continue
                        bytes_stored += size
                        if state == b"in_flight":
                            in_flight.append(float(created_at))
                        else:
                            done += 1
                if cursor == 0:
                    break
        return StoreStats(
            in_flight=len(in_flight),
            done=done,
            bytes_stored=bytes_stored,
            oldest_in_flight_at=min(in_flight, default=None),
        )

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait for the record's completion or release, announced on its pub/sub channel.

        Subscribes first and reads the record after, so a completion between the two is seen;
        reads again when woken, when the lease would expire, and every `_recheck_every` seconds.
        """
        if timeout <= 0:
            return self.get(identity)
        deadline = monotonic() + timeout
        channel = self._keys.channel(self._keys.key(identity))
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
                    record = self.get(identity)
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
                    pubsub.unsubscribe()
            pubsub.close()  # type: ignore[no-untyped-call, unused-ignore]

    def close(self) -> None:
        """Close the client's connections, if this store created the client."""
        if self._owns_client:
            self._redis.close()

    @staticmethod
    def _held(reply: list[Any]) -> list[Any]:
        """Return a holder-only script's fields, or raise `FencedError` if the caller lost."""
        if reply[0] != 1:
            raise FencedError(lua.fenced_message())
        return reply[1:]
