"""The Redis store: production, many app instances sharing one Redis; shared, fast, TTL-native."""

from __future__ import annotations

import contextlib
from typing import Any, Unpack, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from retrysafe._clock import Clock, SystemClock
from retrysafe._engine import may_take
from retrysafe._errors import ConfigurationError, FencedError, StoreError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe._urls import redact_message, redact_url
from retrysafe.stores import _redis_layout as layout
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores._async import redis_admin as admin
from retrysafe.stores._async import redis_waits as waits
from retrysafe.stores._async.redis_commands import AsyncCommands
from retrysafe.stores._async.redis_replicas import replica_wait
from retrysafe.stores._deletes import RedisDeletes
from retrysafe.stores._redis_errors import ReplicaShortfallError
from retrysafe.stores._redis_executors import async_executor
from retrysafe.stores._redis_home import AsyncRedisHome
from retrysafe.stores._redis_url import server_url
from retrysafe.stores.base import (
    RECORD_FIELDS,
    Listing,
    ListingOptions,
    StoreStats,
    decode_part,
    encode_part,
    new_token,
)

__all__ = ["AsyncRedisStore"]


class AsyncRedisStore:
    """A store in Redis: one string per record (`_redis_layout`), one command or script a primitive.

    `list_records`, `stats` and `purge_expired` SCAN the store's keys: O(records), for admin use.
    Used on one event loop at a time, it follows its caller to another loop, or into a forked
    child, and leaves the connections it had there (`stores/_home.py`).

    Args:
        client: the redis-py client, created with `decode_responses=False`.
        prefix: what every key of this store starts with.
        clock: the time source for leases and retention.
        owns_client: whether `aclose` closes `client` (true when built by `from_url`).
        autopipeline: send the commands that concurrent calls issue in one event-loop turn as
            one pipeline on one connection of the store's own (the async face only: the sync
            store sends each command on its own).
        min_replicas: if more than 0, a write counts only once that many replicas confirm it
            within `replica_timeout_ms` (`stores/_async/redis_replicas.py`).
        replica_timeout_ms: how long a write waits for them, milliseconds.
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
        min_replicas: int = 0,
        replica_timeout_ms: int = 1000,
    ) -> None:
        replicas = replica_wait(min_replicas, replica_timeout_ms)
        if self._connection_kwargs(client).get("decode_responses"):
            raise ConfigurationError("The Redis store needs a client with decode_responses=False.")
        self.clock: Clock = clock or SystemClock()
        self._redis = client
        self._keys = lua.KeySpace(prefix)
        self._owns_client = owns_client
        self._replicas = replicas
        self._commands = self._executor(client, autopipeline=autopipeline, replicas=replicas)
        self._home = AsyncRedisHome()
        self._set_get = True  # the server takes `SET ... NX GET` (Redis 7.0 and later)
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
    def from_url(cls, url: str, *, clock: Clock | None = None) -> AsyncRedisStore:
        """Build the store from `redis://host:6379/0` or `rediss://...`.

        Query options: `prefix` (default `retrysafe`), `socket_timeout` and `connect_timeout`
        (seconds, default 5): every primitive answers or fails within them (auto-pipelined, it
        may first wait for the batch in flight); `autopipeline` (default true; async face only);
        `min_replicas` and `replica_timeout_ms` (see the class); with `rediss://`,
        `ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile` (`stores/_redis_url.py`).
        """
        parsed = server_url(url)
        try:
            client = Redis.from_url(
                parsed.url,
                decode_responses=False,
                socket_timeout=parsed.socket_timeout,
                socket_connect_timeout=parsed.connect_timeout,
                # One attempt per primitive: a retried claim could find its own lost claim in
                # flight, and the bound on a failure is the timeouts above, not a multiple.
                retry=Retry(NoBackoff(), 0),
            )
        except ValueError as error:
            raise ConfigurationError(
                f"Invalid Redis store URL {redact_url(url)!r}: {redact_message(str(error), url)}"
            ) from None
        store = cls(
            client,
            prefix=parsed.prefix,
            clock=clock,
            owns_client=True,
            autopipeline=parsed.autopipeline,
            **parsed.replicas,
        )
        store._deletes = RedisDeletes(
            parsed.url, store._keys.deleted, timeout=parsed.connect_timeout
        )
        return store

    def delete_announcements(self) -> RedisDeletes | None:
        """Return what subscribes to this store's deletes (its `<prefix>:deleted` channel),
        for a replay cache in front of it; None for a store built from a client, whose URL
        it does not know."""
        return self._deletes

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record (`_claim`).

        A claim too few replicas confirmed (`min_replicas`) is released, best effort, unused:
        the shortfall is what the caller gets, whether the release lands, fails, or finds the
        record no longer the claim's (a failover lost the write; another claimant took the key).
        """
        token = new_token()
        await self._enter()
        try:
            return await self._claim_with(
                token, identity, fingerprint, lease=lease, retention=retention
            )
        except ReplicaShortfallError:
            with contextlib.suppress(StoreError, FencedError):
                await self.release(identity, token)
            raise

    async def _claim_with(
        self, token: str, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` with `token`, or return the existing record.

        One `SET ... NX GET` settles a fresh claim (nil: set) and finds a record that stays
        someone else's; only a record the claim may take (past retention, a lapsed lease) or a
        layout-1 hash goes to the claim script, which decides again atomically.
        """
        now = self.clock.now()
        lease_expires_at = now + lease
        expires_at = lease_expires_at + retention
        key = self._keys.key(identity)
        encoded = encode_part(fingerprint)
        value = layout.encode_claim(
            token,
            encoded,
            layout.identity_parts(identity),
            created_at=now,
            lease_expires_at=lease_expires_at,
            expires_at=expires_at,
        )
        ttl = lua.physical_ttl(expires_at, now)
        with lua.translate_errors():
            try:
                found = await self._commands.set_new(key, value, ttl) if self._set_get else b""
            except ResponseError as error:
                if layout.is_syntax_error(error):  # before Redis 7.0: every claim by the script
                    self._set_get = False
                elif not layout.is_wrong_type(error):
                    raise
                found = b""  # a layout-1 hash, or no `SET ... NX GET`: the script decides
        code, created_at, recovery_point = 1, now, None  # 1: claimed fresh
        if found is not None:
            if found:
                existing = layout.record_from_string(found, identity)
                if not may_take(existing, fingerprint, now):
                    return Claim(existing, acquired=False)
            reply = await self._run(
                self._claim, key, now, encoded, token, lease_expires_at, expires_at, ttl, value
            )
            code = reply[0]
            if code == 0:
                return Claim(layout.record_from_string(reply[1], identity), acquired=False)
            if code == 2:  # the script's codes, as its comment says
                return Claim(layout.record_from_values(reply[1], identity), acquired=False)
            if code == 3:
                _, created_at, _, _, recovery_point = layout.held_from_string(reply[1])
            elif code == 4:
                created_at = float(reply[1])
                recovery_point = None if reply[2] is None else decode_part(reply[2])
        record = Record(  # positional, in `RECORD_FIELDS` order
            identity, fingerprint, State.IN_FLIGHT, token, created_at, lease_expires_at,
            expires_at, None, recovery_point,
        )  # fmt: skip
        return Claim(record, acquired=True, taken_over=code != 1)

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done; wake its waiters."""
        key = self._keys.key(identity)
        now = self.clock.now()
        expires_at = now + retention
        reply = await self._run(
            self._complete,
            key,
            now,
            token,
            outcome,
            expires_at,
            self._keys.channel(key),
            lua.physical_ttl(expires_at, now),
            layout.pack_times(now, expires_at),
        )
        times = (now, expires_at)  # layout 2 returns the value as it was: the deadlines moved
        return layout.held_record(lua.held(reply), identity, token, State.DONE, outcome, times)

    async def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record so a retry runs again; wake its waiters."""
        key = self._keys.key(identity)
        reply = await self._run(
            self._release, key, self.clock.now(), token, self._keys.channel(key)
        )
        lua.held(reply)

    async def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease to `lease` seconds from now."""
        now = self.clock.now()
        reply = await self._run(self._renew, self._keys.key(identity), now, token, now + lease)
        return layout.held_record(lua.held(reply), identity, token, State.IN_FLIGHT)

    async def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase of a multi-phase operation."""
        reply = await self._run(
            self._checkpoint,
            self._keys.key(identity),
            self.clock.now(),
            token,
            encode_part(recovery_point),
        )
        return layout.held_record(lua.held(reply), identity, token, State.IN_FLIGHT)

    async def get(self, identity: Identity) -> Record | None:
        """Return the live record, or None (one GET; retention checked against the clock)."""
        key = self._keys.key(identity)
        await self._enter()
        with lua.translate_errors():
            try:
                found: Any = await self._commands.get(key)
            except ResponseError as error:
                if not layout.is_wrong_type(error):
                    raise
                found = await self._commands.hmget(key, RECORD_FIELDS)  # a layout-1 hash
        return layout.live_record(found, identity, self.clock.now())

    async def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; wake its waiters."""
        keys = self._keys
        key = keys.key(identity)
        deleted = await self._run(
            self._delete, key, keys.channel(key), keys.deleted, identity.digest()
        )
        return bool(deleted)

    async def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention, SCANning in batches."""
        now = self.clock.now()
        await self._enter()
        with lua.translate_errors():
            return await admin.purge_expired(
                self._redis, self._keys, self._purge, now=now, limit=limit
            )

    async def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first (SCAN: O(records))."""
        now = self.clock.now()
        await self._enter()
        with lua.translate_errors():
            return await admin.list_records(
                self._redis,
                self._keys,
                Listing(**filters),
                now=now,
            )

    async def stats(self) -> StoreStats:
        """Return counts of live records (SCAN: O(records); outcomes are sized, not read)."""
        now = self.clock.now()
        await self._enter()
        with lua.translate_errors():
            return await admin.stats(self._redis, self._keys, now=now)

    async def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait for the record's completion or release, announced on its pub/sub channel
        (`redis_waits`); read again every `_recheck_every` seconds at most."""
        if timeout <= 0:
            return await self.get(identity)
        key = self._keys.key(identity)

        async def watch() -> Record | None:
            found = await self._run(self._watch, key)
            return layout.live_record(found, identity, self.clock.now())

        await self._enter()
        with lua.translate_errors():
            return await waits.wait_on_channel(
                self._redis,
                self._keys.channel(key),
                watch,
                clock=self.clock,
                timeout=timeout,
                recheck=self._recheck_every,
            )

    async def aclose(self) -> None:
        """Close the executor's own connection, if any, and the client if the store created it
        (in a forked child, only what the child opened: `_enter`)."""
        await self._enter()
        try:
            await self._commands.aclose()
        finally:
            if self._owns_client:
                await self._redis.aclose()

    @staticmethod
    def _connection_kwargs(client: Any) -> dict[str, Any]:
        """Return the options the client opens its connections with."""
        return cast("dict[str, Any]", client.connection_pool.connection_kwargs)

    @staticmethod
    def _executor(
        client: Any, *, autopipeline: bool, replicas: tuple[int, int] | None
    ) -> AsyncCommands:
        """Return what sends the store's commands (`_redis_executors`)."""
        return async_executor(client, autopipeline=autopipeline, replicas=replicas)

    async def _run(self, script: AsyncScript, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA (loaded first if Redis does not know it)."""
        await self._enter()
        with lua.translate_errors():
            return await self._commands.evalsha(script, key, *args)

    async def _enter(self) -> None:
        """Move the store here if it was last used on another event loop, or in the parent of
        this forked process (`stores/_home.py`); one comparison when it was not."""
        forked = self._home.moved()
        if forked is not None:
            with lua.translate_errors():
                await self._move(forked=forked)

    async def _move(self, *, forked: bool) -> None:
        """Leave the connections of the loop or process the store was last used in: all
        forgotten at once, then closed, or kept in a forked child (`stores/_redis_home.py`)."""
        held = [*self._commands.forget_connections(), *self._home.empty_pool(self._redis)]
        await self._home.leave(held, forked=forked)
