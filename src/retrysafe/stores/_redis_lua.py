"""What both faces of the Redis store share: the Lua scripts, key names and record decoding.

A record is one hash at `{prefix}:{<identity digest>}`. The digest between braces is the Redis
Cluster hash tag, and every script below touches that one key, so the store works on a cluster.
Each multi-step primitive is one script (one round trip, atomic in Redis, B7). Time is the
caller's clock, passed as `now`; retention is enforced by comparing `expires_at` with it, and a
physical PEXPIRE a little after `expires_at` lets Redis reclaim the memory by itself.

Times are stored as Python's `repr` of the float, or `%.17g` when Lua computes them, so every
value reads back as exactly the float that the memory store would hold.

What a script costs is mostly the calls it makes into Redis (each `redis.call` is a command run
on the server's side), so each script makes as few as its job needs: a fresh claim reads, writes
and sets the expiry; a completion reads the fields the check and the caller need, writes and
sets the expiry. The caller computes the physical expiry (`physical_ttl`), and a waiter marks
the record `watched`, so a completion publishes only when someone listens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from retrysafe._errors import ConfigurationError, StoreError, StoreUnavailableError
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import FENCED, RECORD_FIELDS, decode_part

__all__ = [
    "CHECKPOINT",
    "CLAIM",
    "COMPLETE",
    "DELETE",
    "GRACE_MS",
    "PURGE",
    "RELEASE",
    "RENEW",
    "WATCH",
    "KeySpace",
    "fenced_message",
    "physical_ttl",
    "record_from_fields",
    "record_from_values",
    "translate_errors",
]

GRACE_MS = 5_000
"""How long after `expires_at` Redis drops a key by itself: room for clocks that disagree."""

_PERSIST_FROM_MS = 1e15
"""A physical expiry this far away (about 31,700 years) is no expiry at all: PERSIST."""

_HMGET_RECORD = "redis.call('HMGET', KEYS[1], " + ", ".join(f"'{f}'" for f in RECORD_FIELDS) + ")"

# Set the physical expiry of KEYS[1]: `ms` milliseconds (a string), or none at all for '0'.
_EXPIRE = """
local function expire(ms)
  if ms == '0' then
    redis.call('PERSIST', KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ms)
  end
end
"""

# ARGV: now, fingerprint, token, lease_expires_at, expires_at, namespace, scope, key, ttl_ms.
# Returns {1} when the caller now holds a fresh record, {1, created_at, recovery_point} when it
# took one over, and {0, <RECORD_FIELDS>} when the record is someone else's. The condition is
# `retrysafe._engine.may_take`: absent or past retention, or in flight under an expired lease
# with the same fingerprint. A takeover continues the same operation (B30): the identity,
# fingerprint, creation time, recovery point and `watched` stay, an in-flight record has no
# outcome, so only the token and the deadlines change.
CLAIM = f"""
local now = tonumber(ARGV[1])
local rec = {_HMGET_RECORD}
if rec[6] then
  if tonumber(rec[6]) > now then
    if rec[2] ~= 'in_flight' or tonumber(rec[5]) > now or rec[1] ~= ARGV[2] then
      return {{0, rec}}
    end
    redis.call('HSET', KEYS[1], 'token', ARGV[3], 'lease_expires_at', ARGV[4],
      'expires_at', ARGV[5])
    if ARGV[9] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[9]) end
    return {{1, rec[4], rec[8]}}
  end
  redis.call('DEL', KEYS[1])
elseif rec[1] or rec[2] or rec[3] or rec[4] or rec[5] or rec[7] or rec[8] then
  redis.call('DEL', KEYS[1])  -- a malformed hash: replaced whole, never merged into
end
redis.call('HSET', KEYS[1], 'namespace', ARGV[6], 'scope', ARGV[7], 'key', ARGV[8],
  'fingerprint', ARGV[2], 'state', 'in_flight', 'token', ARGV[3], 'created_at', ARGV[1],
  'lease_expires_at', ARGV[4], 'expires_at', ARGV[5])
if ARGV[9] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[9]) end
return {{1}}
"""

# The check shared by complete, release, renew and checkpoint: the record is live, in flight,
# and held by ARGV[2] (the caller's token). `rec` is HMGET token, state, expires_at, ...
_HELD = """
if rec[1] ~= ARGV[2] or rec[2] ~= 'in_flight' or tonumber(rec[3]) <= tonumber(ARGV[1]) then
  return {0}
end
"""

# COMPLETE, RENEW and CHECKPOINT return {0} when fenced, else {1, <HELD>}: the record's
# fingerprint, created_at, lease_expires_at, expires_at and recovery_point as the script left
# them (its identity, state, token and outcome are the caller's).

# ARGV: now, token, outcome, expires_at, channel, ttl_ms.
# Returns {1, <HELD>} or {0}; publishes on the channel if a waiter marked the record.
COMPLETE = (
    _EXPIRE
    + """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'fingerprint', 'created_at', 'recovery_point', 'watched')
"""
    + _HELD
    + """
redis.call('HSET', KEYS[1], 'state', 'done', 'outcome', ARGV[3],
  'lease_expires_at', ARGV[1], 'expires_at', ARGV[4])
expire(ARGV[6])
if rec[7] then
  redis.call('PUBLISH', ARGV[5], 'done')
end
return {1, rec[4], rec[5], ARGV[1], ARGV[4], rec[6]}
"""
)

# ARGV: now, token, channel. Returns {0} when fenced, else {1}; publishes if a waiter marked it.
RELEASE = (
    """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at', 'watched')
"""
    + _HELD
    + """
redis.call('DEL', KEYS[1])
if rec[4] then
  redis.call('PUBLISH', ARGV[3], 'released')
end
return {1}
"""
)

# ARGV: now, token, lease_expires_at (now + lease). Returns {1, <HELD>} or {0}.
# Retention moves by as much as the lease moved forward, as in the memory store.
RENEW = (
    _EXPIRE
    + f"""
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'lease_expires_at', 'fingerprint', 'created_at', 'recovery_point')
{_HELD}
local now = tonumber(ARGV[1])
local expires_at = tonumber(rec[3]) + math.max(0, tonumber(ARGV[3]) - tonumber(rec[4]))
local stored = string.format('%.17g', expires_at)
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[3], 'expires_at', stored)
local ms = math.ceil((expires_at - now) * 1000) + {GRACE_MS}
if ms < 1 then ms = 1 end
if ms < {_PERSIST_FROM_MS:.0f} then expire(string.format('%d', ms)) else expire('0') end
return {{1, rec[5], rec[6], ARGV[3], stored, rec[7]}}
"""
)

# ARGV: now, token, recovery_point. Returns {1, <HELD>} or {0}.
CHECKPOINT = (
    """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'fingerprint', 'created_at', 'lease_expires_at')
"""
    + _HELD
    + """
redis.call('HSET', KEYS[1], 'recovery_point', ARGV[3])
return {1, rec[4], rec[5], rec[6], rec[3], ARGV[3]}
"""
)

# A waiter's read, once it is subscribed: returns <RECORD_FIELDS> and marks an in-flight record
# `watched`, so its completion or release publishes. Both scripts are atomic, so either this
# one runs first (the completion sees the mark and publishes to the subscribed waiter) or the
# completion does (and this one returns the outcome). A takeover keeps the mark; a record
# deleted and claimed anew starts unmarked, and the waiter's next read marks it.
WATCH = f"""
local rec = {_HMGET_RECORD}
if rec[2] == 'in_flight' then
  redis.call('HSET', KEYS[1], 'watched', '1')
end
return rec
"""

# ARGV: channel, deletes channel, record id. Deletes whatever the state, wakes waiters and
# announces the delete to replay caches (`stores/_deletes.py`); returns 1 if a record existed.
DELETE = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', ARGV[1], 'deleted')
  redis.call('PUBLISH', ARGV[2], ARGV[3])
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


def physical_ttl(expires_at: float, now: float) -> int:
    """Return the PEXPIRE for a record ending at `expires_at`: milliseconds, or 0 for none."""
    ms = (expires_at - now) * 1000
    if not ms < _PERSIST_FROM_MS:  # also NaN, as in Lua
        return 0
    return max(1, math.ceil(ms) + GRACE_MS)


class KeySpace:
    """The names of one store's keys and channels under a prefix.

    Args:
        prefix: what every key starts with; `{` and `}` are refused, they would move the hash tag.
    """

    __slots__ = ("_head", "_last", "deleted", "match", "prefix")

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
        self.deleted = f"{prefix}:deleted".encode()
        """The channel on which deletes are announced to replay caches."""
        self._last: tuple[Identity | None, bytes] = (None, b"")
        escaped = "".join("\\" + c if c in "*?[]\\^" else c for c in prefix)
        self.match = f"{escaped}:{{*}}"
        """The SCAN pattern that finds every record key of this store."""

    def key(self, identity: Identity) -> bytes:
        """Return the record's key: the hashed identity inside the hash tag (B34).

        The last one is kept: a completion passes the very identity its claim did, and is
        spared hashing it again. (One tuple, read and replaced whole: safe between threads.)
        """
        last = self._last
        if last[0] is identity:
            return last[1]
        key = self._head + identity.digest().encode("ascii") + b"}"
        self._last = (identity, key)
        return key

    @staticmethod
    def channel(key: bytes) -> bytes:
        """Return the pub/sub channel on which a record's completion and release are announced."""
        return key + b":settled"


def fenced_message() -> str:
    """Return the message of the `FencedError` raised to a caller that lost its claim."""
    return FENCED


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


_STATES = {state.value.encode(): state for state in State}


def record_from_values(values: Sequence[bytes | None], identity: Identity) -> Record:
    """Return the record from the values of `RECORD_FIELDS` (HMGET, or a script's reply)."""
    fingerprint, state, token, created_at, lease_expires_at, expires_at, outcome, recovery = values
    try:
        return Record(
            identity=identity,
            fingerprint=decode_part(fingerprint),  # type: ignore[arg-type]
            state=_STATES[state],  # type: ignore[index]
            token=token.decode(),  # type: ignore[union-attr]
            created_at=float(created_at),  # type: ignore[arg-type]
            lease_expires_at=float(lease_expires_at),  # type: ignore[arg-type]
            expires_at=float(expires_at),  # type: ignore[arg-type]
            outcome=outcome,
            recovery_point=None if recovery is None else decode_part(recovery),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise StoreError(f"A Redis record is malformed ({error!r}); delete it.") from error


class _TranslateErrors:
    """The context manager behind `translate_errors` (a class: cheaper than a generator)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, (RedisConnectionError, RedisTimeoutError, OSError)):
            raise StoreUnavailableError(f"Redis is unavailable: {error}") from error
        if isinstance(error, RedisError):
            raise StoreError(f"Redis failed: {error}") from error


_TRANSLATE_ERRORS = _TranslateErrors()


def translate_errors() -> _TranslateErrors:
    """Turn redis-py errors into retrysafe's: unreachable or slow is `StoreUnavailableError`."""
    return _TRANSLATE_ERRORS
