# Generated from stores/_async/redis_replicas.py by scripts/unasync.py; edit the source, not this.
# ruff: noqa
# fmt: off
"""Replica-safe writes for the Redis stores (`?min_replicas=N&replica_timeout_ms=T`).

Redis replicates asynchronously: a write its master acknowledged is lost if the master dies
before a replica has it, and a lost claim lets a retry run the effect again. With
`min_replicas`, every write (a claim, a completion, a renewal, a release, a checkpoint, a
delete) is followed, on the same connection, by `WAIT N T`, and counts as done only once N
replicas have confirmed it; fewer within T milliseconds raise `ReplicaShortfallError`, a
`StoreUnavailableError`, so the caller fails closed. Reads are sent as usual. This narrows the
window in which a failover loses an acknowledged write; it does not make Redis strongly
consistent (docs/stores.md says what is and is not guaranteed).
"""

from __future__ import annotations

from typing import Any, cast

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from retrysafe._errors import ConfigurationError
from retrysafe.stores._sync.redis_commands import Commands
from retrysafe.stores._redis_errors import ReplicaShortfallError
from retrysafe.stores._redis_pinned import Command, sync_pinned_exchange

__all__ = ["REPLICA_OPTIONS", "ReplicaWrites", "replica_options", "replica_wait"]

REPLICA_OPTIONS: dict[str, type] = {"min_replicas": int, "replica_timeout_ms": int}
"""The store URL options of replica-safe writes, and their types."""


def replica_options(options: dict[str, object]) -> dict[str, int]:
    """Return the replica options found in a store URL's parsed query, as keyword arguments;
    refuse bad values at once (`replica_wait`), before any connection is made."""
    found = {name: cast(int, options[name]) for name in REPLICA_OPTIONS if name in options}
    replica_wait(found.get("min_replicas", 0), found.get("replica_timeout_ms", 1000))
    return found


def replica_wait(min_replicas: int, timeout_ms: int) -> tuple[int, int] | None:
    """Return (replicas, timeout in ms) for `WAIT`, None without `min_replicas`; refuse a
    negative count, and a timeout of 0 or less (`WAIT` with 0 would wait forever)."""
    if min_replicas < 0:
        raise ConfigurationError(f"min_replicas must be 0 or more, not {min_replicas}.")
    if min_replicas == 0:
        return None
    if timeout_ms <= 0:
        raise ConfigurationError(
            f"replica_timeout_ms must be more than 0 milliseconds, not {timeout_ms}."
        )
    return (min_replicas, timeout_ms)


class ReplicaWrites(Commands):
    """Send each write with `WAIT replicas timeout_ms` on one connection; reads as usual.

    Args:
        client: the redis-py client (one server or a cluster).
        replicas: how many replicas must confirm each write.
        timeout_ms: how long `WAIT` may wait for them, milliseconds (more than 0).
    """

    __slots__ = ("_replicas", "_timeout_ms")

    def __init__(self, client: Any, *, replicas: int, timeout_ms: int) -> None:
        super().__init__(client)
        self._replicas = replicas
        self._timeout_ms = timeout_ms

    def evalsha(self, script: Script, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA, then WAIT; load the script if Redis lacks it."""
        command = ("EVALSHA", script.sha, 1, key, *args)
        replies = self._write(key, command)
        if isinstance(replies[0], NoScriptError):
            self._redis.script_load(script.script)
            replies = self._write(key, command)
        return self._confirmed(replies)

    def set_new(self, key: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """SET `key` to `value` unless it exists, then WAIT; return what was there."""
        expiry = ("PX", ttl_ms) if ttl_ms else ()
        found: bytes | None = self._confirmed(
            self._write(key, ("SET", key, value, "NX", *expiry, "GET"))
        )
        return found

    def _write(self, key: bytes, command: Command) -> list[Any]:
        wait = ("WAIT", self._replicas, self._timeout_ms)
        return sync_pinned_exchange(self._redis, key, (command, wait))

    def _confirmed(self, replies: list[Any]) -> Any:
        """Return the write's reply once enough replicas confirmed it; raise otherwise."""
        reply, confirmed = replies
        if isinstance(reply, Exception):
            raise reply
        if isinstance(confirmed, Exception):
            raise confirmed
        if confirmed < self._replicas:
            raise ReplicaShortfallError(
                f"Redis confirmed the write on {confirmed} of the {self._replicas} replicas"
                f" required (min_replicas) within {self._timeout_ms} ms; it is not used."
            )
        return reply
