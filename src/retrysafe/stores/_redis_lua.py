"""What both faces of the Redis store share: the Lua scripts, key names and hash decoding.

A record is one hash at `{prefix}:{<identity digest>}`. The digest between braces is the Redis
Cluster hash tag, and every script below touches that one key, so the store works on a cluster.
Each multi-step primitive is one script (one round trip, atomic in Redis, B7). Time is the
caller's clock, passed as `now`; retention is enforced by comparing `expires_at` with it, and a
physical PEXPIRE a little after `expires_at` lets Redis reclaim the memory by itself.

Times are stored as Python's `repr` of the float, or `%.17g` when Lua computes them, so every
value reads back as exactly the float that the memory store would hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe._errors import ConfigurationError, StoreError, StoreUnavailableError
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import decode_part

__all__ = [
    "CHECKPOINT",
    "CLAIM",
    "COMPLETE",
    "DELETE",
    "GRACE_MS",
    "PURGE",
    "RELEASE",
    "RENEW",
    "KeySpace",
    "fenced_message",
    "record_from_fields",
    "record_from_flat",
    "translate_errors",
]

GRACE_MS = 5_000
"""How long after `expires_at` Redis drops a key by itself: room for clocks that disagree."""

# Set the physical expiry of `key` to `expires_at` (by the caller's clock) plus the grace.
_EXPIRE = f"""
local function expire(key, expires_at, now)
  local ms = math.ceil((expires_at - now) * 1000) + {GRACE_MS}
  if ms < 1 then ms = 1 end
  if ms < 1e15 then
    redis.call('PEXPIRE', key, string.format('%d', ms))
  else
    redis.call('PERSIST', key)
  end
end
"""

# ARGV: now, fingerprint, token, lease_expires_at, expires_at, namespace, scope, key.
# Returns {1, taken_over, created_at, recovery_point} when the caller now holds the record, else
# {0, HGETALL of the record}. The condition is `retrysafe._engine.may_take`: absent or past
# retention, or in flight under an expired lease with the same fingerprint. A takeover continues
# the same operation, so it keeps the creation time and the recovery point (B30).
CLAIM = (
    _EXPIRE
    + """
local now = tonumber(ARGV[1])
local rec = redis.call('HMGET', KEYS[1], 'expires_at', 'state', 'lease_expires_at',
  'fingerprint', 'created_at', 'recovery_point')
local taken_over, created_at, recovery_point = 0, ARGV[1], false
if rec[1] and tonumber(rec[1]) > now then
  if rec[2] ~= 'in_flight' or tonumber(rec[3]) > now or rec[4] ~= ARGV[2] then
    return {0, redis.call('HGETALL', KEYS[1])}
  end
  taken_over, created_at, recovery_point = 1, rec[5], rec[6]
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'namespace', ARGV[6], 'scope', ARGV[7], 'key', ARGV[8],
  'fingerprint', ARGV[2], 'state', 'in_flight', 'token', ARGV[3], 'created_at', created_at,
  'lease_expires_at', ARGV[4], 'expires_at', ARGV[5])
if recovery_point then
  redis.call('HSET', KEYS[1], 'recovery_point', recovery_point)
end
expire(KEYS[1], tonumber(ARGV[5]), now)
return {1, taken_over, created_at, recovery_point}
"""
)

# The check shared by complete, release, renew and checkpoint: the record is live, in flight,
# and held by ARGV[2] (the caller's token). `rec` is HMGET token, state, expires_at, ...
_HELD = """
local now = tonumber(ARGV[1])
if rec[1] ~= ARGV[2] or rec[2] ~= 'in_flight' or tonumber(rec[3]) <= now then
  return {0}
end
"""

# ARGV: now, token, outcome, expires_at, channel.
# Returns {0} when fenced, else {1, fingerprint, created_at, recovery_point}.
COMPLETE = (
    _EXPIRE
    + """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'fingerprint', 'created_at', 'recovery_point')
"""
    + _HELD
    + """
redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[3],
  'lease_expires_at', ARGV[1], 'expires_at', ARGV[4])
expire(KEYS[1], tonumber(ARGV[4]), now)
redis.call('PUBLISH', ARGV[5], 'done')
return {1, rec[4], rec[5], rec[6]}
"""
)

# ARGV: now, token, channel. Returns {0} when fenced, else {1}.
RELEASE = (
    """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at')
"""
    + _HELD
    + """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[3], 'released')
return {1}
"""
)

# ARGV: now, token, lease_expires_at (now + lease).
# Returns {0} when fenced, else {1, fingerprint, created_at, expires_at, recovery_point}.
# Retention moves by as much as the lease moved forward, as in the memory store.
RENEW = (
    _EXPIRE
    + """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'lease_expires_at', 'fingerprint', 'created_at', 'recovery_point')
"""
    + _HELD
    + """
local expires_at = tonumber(rec[3]) + math.max(0, tonumber(ARGV[3]) - tonumber(rec[4]))
local stored = string.format('%.17g', expires_at)
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[3], 'expires_at', stored)
expire(KEYS[1], expires_at, now)
return {1, rec[5], rec[6], stored, rec[7]}
"""
)

# ARGV: now, token, recovery_point.
# Returns {0} when fenced, else {1, fingerprint, created_at, lease_expires_at, expires_at}.
CHECKPOINT = (
    """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'fingerprint', 'created_at', 'lease_expires_at')
"""
    + _HELD
    + """
redis.call('HSET', KEYS[1], 'recovery_point', ARGV[3])
return {1, rec[4], rec[5], rec[6], rec[3]}
"""
)

# ARGV: channel. Deletes whatever the state and wakes waiters; returns 1 if a record existed.
DELETE = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'deleted')
  return 1
end
return 0
"""

# ARGV: now. Deletes the record only if it is still past its retention; returns 1 if it did.
PURGE = """
local expires_at = redis.call('HGET', KEYS[1], 'expires_at')
if expires_at and tonumber(expires_at) <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class KeySpace:
    """The names of one store's keys and channels under a prefix.

    Args:
        prefix: what every key starts with; `{` and `}` are refused, they would move the hash tag.
    """

    __slots__ = ("_head", "match", "prefix")

    def __init__(self, prefix: str) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigurationError(
                f"A Redis store prefix must be non-empty, without braces, not {prefix!r}."
            )
        try:
            self._head = f"{prefix}:{{".encode()
        except UnicodeEncodeError:
            raise ConfigurationError(
                f"A Redis store prefix must be text, not {prefix!r}."
            ) from None
        self.prefix = prefix
        escaped = "".join("\\" + c if c in "*?[]\\^" else c for c in prefix)
        self.match = f"{escaped}:{{*}}"
        """The SCAN pattern that finds every record key of this store."""

    def key(self, identity: Identity) -> bytes:
        """Return the record's key: the hashed identity inside the hash tag (B34)."""
        return self._head + identity.digest().encode("ascii") + b"}"

    @staticmethod
    def channel(key: bytes) -> bytes:
        """Return the pub/sub channel on which a record's completion and release are announced."""
        return key + b":settled"


def fenced_message() -> str:
    """Return the message of the `FencedError` raised to a caller that lost its claim."""
    return "This claim no longer holds the key: its lease was taken over or the record ended."


def record_from_fields(fields: Mapping[bytes, bytes], identity: Identity | None = None) -> Record:
    """Return the record stored in a hash (HGETALL); `identity` saves decoding it again."""
    try:
        if identity is None:
            identity = Identity(
                decode_part(fields[b"namespace"]),
                decode_part(fields[b"scope"]),
                decode_part(fields[b"key"]),
            )
        recovery_point = fields.get(b"recovery_point")
        return Record(
            identity=identity,
            fingerprint=decode_part(fields[b"fingerprint"]),
            state=State(fields[b"state"].decode()),
            token=fields[b"token"].decode(),
            created_at=float(fields[b"created_at"]),
            lease_expires_at=float(fields[b"lease_expires_at"]),
            expires_at=float(fields[b"expires_at"]),
            outcome=fields.get(b"outcome"),
            recovery_point=None if recovery_point is None else decode_part(recovery_point),
        )
    except (KeyError, ValueError) as error:
        raise StoreError(f"A Redis record is malformed ({error!r}); delete it.") from error


def record_from_flat(flat: list[bytes], identity: Identity) -> Record:
    """Return the record from a script's HGETALL reply, a flat list of fields and values."""
    pairs = iter(flat)
    return record_from_fields(dict(zip(pairs, pairs, strict=True)), identity)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn redis-py errors into retrysafe's: unreachable or slow is `StoreUnavailableError`."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as error:
        raise StoreUnavailableError(f"Redis is unavailable: {error}") from error
    except RedisError as error:
        raise StoreError(f"Redis failed: {error}") from error
