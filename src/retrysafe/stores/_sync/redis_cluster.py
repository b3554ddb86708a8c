# Generated from stores/_async/redis_cluster.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""The Redis Cluster store (`redis+cluster://host:port[,host:port...]/`): the Redis store, sharded.

Every key of a record lives in one hash slot (the hashed identity is the hash tag, B34), so each
primitive is one command or script on the master that serves that slot: the same commands and
scripts as `RedisStore`, routed by redis-py's cluster client, which follows `MOVED` and
`ASK` redirections (a resharding) and refreshes its map of the slots. What differs:

- The seeds in the URL are where the client starts; it discovers the other nodes.
- Commands are sent one by one (no auto-pipelining: one pipeline cannot span the masters) and
  never retried after a connection error or a timeout: the caller gets `StoreUnavailableError`
  (fail closed), as on one node. A redirection is not a retry: the command did not run.
- Completions are announced with `PUBLISH`, which a cluster forwards to every node; a waiter
  subscribes on the node that serves its record's slot.
- `list_records`, `stats` and `purge_expired` SCAN every master in turn.
- Met on another event loop, or in a forked child, a store built from its URL builds a new
  client there and leaves the old one whole: a cluster client's nodes, locks and tasks are its
  loop's. A client of the caller's stays, its nodes' connections left (`stores/_redis_home.py`).
"""

from __future__ import annotations

from collections.abc import Iterator, Callable
from typing import Any, Unpack, cast
from urllib.parse import unquote, urlsplit

from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.backoff import NoBackoff

from retrysafe._clock import Clock
from retrysafe._errors import ConfigurationError
from retrysafe._record import Record
from retrysafe._urls import redact_url
from retrysafe.stores import _redis_lua as lua
from retrysafe.stores._sync import redis_admin as admin
from retrysafe.stores._sync.redis import RedisStore
from retrysafe.stores._sync.redis_commands import Commands
from retrysafe.stores._sync.redis_replicas import (
    REPLICA_OPTIONS,
    PinnedCommands,
    replica_options,
)
from retrysafe.stores._deletes import RedisDeletes
from retrysafe.stores._redis_pinned import require_refresh_requests
from retrysafe.stores._redis_url import (
    TLS_OPTIONS,
    refuse_cut_userinfo,
    timeouts,
    tls_options,
    tls_query,
)
from retrysafe.stores.base import Listing, ListingOptions, StoreStats, query_options

__all__ = ["RedisClusterStore", "cluster_seeds"]

_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_OPTIONS: dict[str, type] = {
    "prefix": str,
    "socket_timeout": float,
    "connect_timeout": float,
    **REPLICA_OPTIONS,
    **TLS_OPTIONS,
}


def cluster_seeds(url: str) -> list[tuple[str, int]]:
    """Return the (host, port) seed nodes of a `redis+cluster://` or `rediss+cluster://` URL.

    Raises `ConfigurationError` for another scheme, no seed, a seed without a valid port, or a
    database other than 0 (a cluster has only database 0).
    """
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ConfigurationError(
            "A Redis Cluster store URL is redis+cluster:// or rediss+cluster://, not "
            f"{redact_url(url)!r}."
        )
    refuse_cut_userinfo("Redis Cluster", url)
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigurationError(
            f"A Redis Cluster has only database 0; remove the path from {redact_url(url)!r}."
        )
    hosts = parts.netloc.rpartition("@")[2]
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        try:
            seed_parts = urlsplit(f"//{seed}")
            host, port = seed_parts.hostname, seed_parts.port or 6379
        except ValueError:
            host = None
        if not host:
            raise ConfigurationError(f"Invalid Redis Cluster seed {seed!r} in {redact_url(url)!r}.")
        seeds.append((host, port))
    return seeds


class RedisClusterStore(RedisStore):
    """A store in a Redis Cluster: `RedisStore`'s records and scripts, on many masters.

    Args:
        client: the redis-py cluster client, created with `decode_responses=False`.
        prefix: what every key of this store starts with.
        clock: the time source for leases and retention.
        owns_client: whether `close` closes `client` (true when built by `from_url`).
        autopipeline: ignored: one pipeline cannot span the masters.
        min_replicas: as for `RedisStore`; the `WAIT` goes to the master that took the
            write, on the same connection.
        replica_timeout_ms: as for `RedisStore`.
    """

    _redis: RedisCluster  # type: ignore[assignment]  # the same commands, routed by slot
    _reopen: Callable[[], RedisCluster] | None = None
    """Makes a client like the store's own, anew (set by `from_url`, which has the URL)."""

    @classmethod
    def from_url(cls, url: str, *, clock: Clock | None = None) -> RedisClusterStore:
        """Build the store from `redis+cluster://[user:password@]host:port[,host:port...]/`.

        `rediss+cluster://` connects with TLS. Query options: `prefix` (default `retrysafe`),
        `socket_timeout` and `connect_timeout` (seconds, default 5): every primitive answers or
        fails within them, redirections aside; `min_replicas` and `replica_timeout_ms`; with
        `rediss+cluster://`, `ssl_ca_certs`, `ssl_certfile` and `ssl_keyfile`.
        """
        require_refresh_requests()  # before a client connects
        seeds = cluster_seeds(url)
        parts = urlsplit(url)
        options = query_options(parts.query, _OPTIONS, url=url)
        socket_timeout, connect_timeout = timeouts(options, url=url)
        replicas = replica_options(options)
        tls = tls_options(options, tls=parts.scheme == "rediss+cluster", url=url)

        def connect() -> RedisCluster:
            return RedisCluster(
                startup_nodes=[
                    ClusterNode(host, port)  # type: ignore[no-untyped-call, unused-ignore]
                    for host, port in seeds
                ],
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                ssl=parts.scheme == "rediss+cluster",
                ssl_ca_certs=tls.get("ssl_ca_certs"),
                ssl_certfile=tls.get("ssl_certfile"),
                ssl_keyfile=tls.get("ssl_keyfile"),
                decode_responses=False,
                socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout,
                # No retry after a connection error or a timeout: the command may have run.
                retry=Retry(NoBackoff(), 0),
            )

        with lua.translate_errors():  # the sync client connects here, the async one later
            client = connect()
        prefix = cast(str, options.get("prefix", "retrysafe"))
        store = cls(
            cast(Any, client),  # the same commands as a server's client, routed by slot
            prefix=prefix,
            clock=clock,
            owns_client=True,
            autopipeline=False,
            **replicas,
        )
        # Deletes are PUBLISHed, which the cluster forwards to every node: one seed hears all.
        host, port = seeds[0]
        userinfo = parts.netloc.rpartition("@")[0]
        node_url = f"{_SCHEMES[parts.scheme]}://{userinfo + '@' if userinfo else ''}{host}:{port}"
        store._deletes = RedisDeletes(
            node_url + tls_query(tls), store._keys.deleted, timeout=connect_timeout
        )
        store._reopen = connect
        return store

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention, SCANning master after master."""
        now = self.clock.now()
        purged = 0
        self._enter()
        with lua.translate_errors():
            self._redis.script_load(lua.PURGE)  # on every master: pipelines run it
            for node in self._masters():
                if purged >= limit:
                    break
                purged += admin.purge_expired(
                    node, self._keys, self._purge, now=now, limit=limit - purged
                )
        return purged

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first (SCAN of every master)."""
        now = self.clock.now()
        listing = Listing(**filters)
        found: list[Record] = []
        self._enter()
        with lua.translate_errors():
            for node in self._masters():
                found += admin.list_records(node, self._keys, listing, now=now)
        return listing.newest(found)

    def stats(self) -> StoreStats:
        """Return counts of live records across every master (SCAN: O(records))."""
        now = self.clock.now()
        total = StoreStats(in_flight=0, done=0, bytes_stored=0, oldest_in_flight_at=None)
        self._enter()
        with lua.translate_errors():
            for node in self._masters():
                one = admin.stats(node, self._keys, now=now)
                oldest = [
                    at
                    for at in (total.oldest_in_flight_at, one.oldest_in_flight_at)
                    if at is not None
                ]
                total = StoreStats(
                    in_flight=total.in_flight + one.in_flight,
                    done=total.done + one.done,
                    bytes_stored=total.bytes_stored + one.bytes_stored,
                    oldest_in_flight_at=min(oldest, default=None),
                )
        return total

    @staticmethod
    def _connection_kwargs(client: Any) -> dict[str, Any]:
        return cast("dict[str, Any]", client.get_connection_kwargs())

    @staticmethod
    def _executor(
        client: Any, *, autopipeline: bool, replicas: tuple[int, int] | None
    ) -> Commands:
        del autopipeline  # one pipeline cannot span the masters
        require_refresh_requests()
        return PinnedCommands(client, replicas=replicas)

    def _move(self, *, forked: bool) -> None:
        """Leave the client of the loop or process the store was last used in for a new one;
        a client of the caller's stays, its nodes' connections left."""
        if self._reopen is None:
            self._home.leave(self._home.empty_nodes(self._redis), forked=forked)
            return
        left, self._redis = self._redis, self._reopen()
        self._commands = self._executor(self._redis, autopipeline=False, replicas=self._replicas)
        self._home.leave_cluster(left, forked=forked)

    def _masters(self) -> Iterator[Any]:
        """Yield each master as the admin operations use a client: SCAN there, pipelines
        through the cluster (each command routed by its key)."""
        self._redis.ping()  # the async client learns the nodes on its first command
        for node in self._redis.get_primaries():  # type: ignore[no-untyped-call, unused-ignore]
            yield _Master(self._redis, node)


class _Master:
    """One master of the cluster, with the two client methods the admin operations call."""

    def __init__(self, cluster: RedisCluster, node: ClusterNode) -> None:
        self._redis, self._node = cluster, node

    def scan(self, cursor: int, **options: Any) -> tuple[int, list[bytes]]:
        """SCAN this master only; return its next cursor and the keys."""
        cursors, keys = self._redis.scan(cursor, target_nodes=self._node, **options)
        return cast("dict[str, int]", cursors)[self._node.name], cast("list[bytes]", keys)

    def pipeline(self, transaction: bool = False) -> Any:
        """A pipeline of the cluster: each command goes to the master that serves its key."""
        return self._redis.pipeline(transaction=transaction)  # type: ignore[no-untyped-call, unused-ignore]
