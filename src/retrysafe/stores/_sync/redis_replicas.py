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
consistent (docs/stores.md says what is and is not guaranteed). Nor does it survive a master
that restarts empty (no persistence) before a failover: its replicas resync from it and drop
what they confirmed. So after the first confirmed write the store asks that master for its
persistence (`INFO persistence`, `CONFIG GET save`) once, and logs a warning if it has neither
AOF nor RDB save points; a server that refuses to say (managed Redis) gets no warning.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any, cast

from redis.commands.core import Script
from redis.exceptions import NoScriptError

from retrysafe._errors import ConfigurationError
from retrysafe.stores._sync.redis_commands import Commands
from retrysafe.stores._redis_errors import ReplicaShortfallError
from retrysafe.stores._redis_pinned import Command, sync_pinned_exchange

__all__ = ["REPLICA_OPTIONS", "PinnedCommands", "replica_options", "replica_wait"]

logger = logging.getLogger("retrysafe.stores")

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


def volatile(info: Any, save: Any) -> bool:
    """Return whether replies to `INFO persistence` and `CONFIG GET save` (parsed by redis-py,
    or raw from a cluster node) say the server has neither AOF nor RDB save points."""
    if isinstance(info, dict):
        aof = str(info.get("aof_enabled", ""))
    elif isinstance(info, bytes):
        fields = dict(line.partition(b":")[::2] for line in info.splitlines())
        aof = fields.get(b"aof_enabled", b"").decode()
    else:
        return False
    values = list(save.values()) if isinstance(save, dict) else save
    if not isinstance(values, list) or len(values) not in (1, 2):
        return False
    points = values[-1]
    return aof == "0" and isinstance(points, (bytes, str)) and not points.strip()


class PinnedCommands(Commands):
    """Send each command through `sync_pinned_exchange` (on a cluster: on a connection of the
    key's master, redirections followed there); with `replicas`, each write followed by
    `WAIT replicas timeout_ms` on the same connection.

    Args:
        client: the redis-py client (one server or a cluster).
        replicas: how many replicas must confirm each write, and how long `WAIT` may wait for
            them, milliseconds (more than 0); None: writes wait for no replica.
    """

    __slots__ = ("_checked", "_wait")

    def __init__(self, client: Any, *, replicas: tuple[int, int] | None = None) -> None:
        super().__init__(client)
        self._wait: Command | None = None if replicas is None else ("WAIT", *replicas)
        self._checked = replicas is None  # the master's persistence, after the first write

    def evalsha(self, script: Script, key: bytes, *args: bytes | str | float) -> Any:
        """Run `script` on `key` by EVALSHA (then WAIT); load the script if Redis lacks it."""
        command = ("EVALSHA", script.sha, 1, key, *args)
        replies = self._send(key, command, write=True)
        if isinstance(replies[0], NoScriptError):
            self._redis.script_load(script.script)
            replies = self._send(key, command, write=True)
        return self._confirmed(replies)

    def set_new(self, key: bytes, value: bytes, ttl_ms: int) -> bytes | None:
        """SET `key` to `value` unless it exists (then WAIT); return what was there."""
        expiry = ("PX", ttl_ms) if ttl_ms else ()
        command = ("SET", key, value, "NX", *expiry, "GET")
        found: bytes | None = self._confirmed(self._send(key, command, write=True))
        return found

    def get(self, key: bytes) -> bytes | None:
        """Return the string at `key`, None if absent (a key of another type raises WRONGTYPE)."""
        found: bytes | None = self._confirmed(self._send(key, ("GET", key), write=False))
        return found

    def hmget(self, key: bytes, fields: Sequence[str]) -> list[bytes | None]:
        """Return the values of `fields` in the hash at `key`, None for each one absent."""
        command = ("HMGET", key, *fields)
        values: list[bytes | None] = self._confirmed(self._send(key, command, write=False))
        return values

    def _send(self, key: bytes, command: Command, *, write: bool) -> list[Any]:
        wait = self._wait if write else None
        if wait is None:
            return sync_pinned_exchange(self._redis, key, (command,))
        # `WAIT` counts the replicas that have this connection's last write. A command that
        # changed nothing (a completion sent again after a lost reply, a claim that found a
        # record) is no write, so a one-millisecond marker in the key's slot is written after
        # it: replication is one ordered stream, so a replica that has the marker has every
        # earlier write of that master, the record's included.
        marker = ("SET", key + b":replicated", b"", "PX", 1)
        replies = sync_pinned_exchange(self._redis, key, (command, marker, wait))
        if not self._checked:
            self._checked = True
            self._check_persistence(key)
        return replies

    def _check_persistence(self, key: bytes) -> None:
        """Warn, once, if the master of `key` keeps nothing across a restart."""
        asked = (("INFO", "persistence"), ("CONFIG", "GET", "save"))
        with contextlib.suppress(Exception):  # a refusal, a lost reply: nothing is known
            if volatile(*sync_pinned_exchange(self._redis, key, asked)):
                logger.warning(
                    "min_replicas is set, but the Redis master has neither AOF nor RDB save "
                    "points: restarted empty before a failover, it empties its replicas too, "
                    "and confirmed claims are lost (docs/stores.md, 'Replicas and failover')",
                    extra={"retrysafe_event": "redis_not_persistent"},
                )

    def _confirmed(self, replies: list[Any]) -> Any:
        """Return the command's reply (raise its error); after a write with `WAIT`, only once
        enough replicas confirmed it."""
        reply = replies[0]
        if isinstance(reply, Exception):
            raise reply
        if len(replies) == 1 or self._wait is None:
            return reply
        marked, confirmed, required = replies[-2], replies[-1], self._wait[1]
        if isinstance(marked, Exception):  # a slot on the move redirected it (ASK, MOVED)
            raise ReplicaShortfallError(
                f"Redis could not confirm the write on its replicas ({marked}): its slot is "
                "being moved; it is not used."
            ) from marked
        if isinstance(confirmed, Exception):
            raise confirmed
        if confirmed < required:
            raise ReplicaShortfallError(
                f"Redis confirmed the write on {confirmed} of the {required} replicas"
                f" required (min_replicas) within {self._wait[2]} ms; it is not used."
            )
        return reply
