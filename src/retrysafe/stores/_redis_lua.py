"""What both faces of the Redis store share: the Lua scripts, key names and error mapping.

A record lives at `{prefix}:{<identity digest>}`, as one string (`_redis_layout`; a hash written
by an earlier release is still served). The digest between braces is the Redis Cluster hash
tag, and every script touches that one key, so the store works on a cluster. A fresh claim and a
replay are one `SET ... NX GET`; every other multi-step primitive is one script (one round trip,
atomic in Redis, B7). Time is the caller's clock, passed as `now`; retention is enforced by
comparing `expires_at` with it, and a physical expiry a little after `expires_at` (computed by
the caller, `physical_ttl`) lets Redis reclaim the memory by itself. A waiter marks the record,
so a completion publishes only when someone listens.
"""

from __future__ import annotations

import math
from typing import Any

from retrysafe._errors import ConfigurationError, FencedError
from retrysafe._record import Identity
from retrysafe.stores import _redis_layout as layout
from retrysafe.stores._redis_errors import translate_errors
from retrysafe.stores.base import FENCED, RECORD_FIELDS

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
    "held",
    "physical_ttl",
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
  if ms == '0' then redis.call('PERSIST', KEYS[1])
  else redis.call('PEXPIRE', KEYS[1], ms) end
end
"""

# Write KEYS[1] whole as `value`, expiring in `ms` milliseconds (a string), or never for '0'.
_SET = """
local function set_record(value, ms)
  if ms == '0' then redis.call('SET', KEYS[1], value)
  else redis.call('SET', KEYS[1], value, 'PX', ms) end
end
"""

# Each script GETs the key first. A layout-1 hash answers WRONGTYPE (a table from `redis.pcall`):
# the script then runs `hash_layout`, the script of the release that wrote hashes, unchanged.
_GET = "local v = redis.pcall('GET', KEYS[1])\n"

# The claim that the store's `SET ... NX GET` could not settle: the key holds a record past its
# retention, or in flight under an expired lease, or a layout-1 hash. ARGV: now, fingerprint,
# token, lease_expires_at, expires_at, ttl_ms, record (the fresh layout-2 value).
# Returns {1} when the caller now holds a fresh record; {3, <old value>} when it took a layout-2
# record over, {4, created_at, recovery_point} a hash; {0, <value>} and {2, <RECORD_FIELDS>}
# when the record is someone else's (or a malformed value, which the caller refuses). The
# condition is `retrysafe._engine.may_take`. A takeover continues the same operation (B30): the
# identity, fingerprint, creation time, recovery point and watch mark stay, an in-flight record
# has no outcome, so only the token and the deadlines change. Whatever is replaced whole (past
# retention, a malformed hash) is written anew in layout 2.
CLAIM = (
    layout.HEAD
    + _SET
    + _GET
    + f"""
local now = tonumber(ARGV[1])
if type(v) == 'table' then
  local rec = {_HMGET_RECORD}
  if rec[6] and tonumber(rec[6]) > now then
    if rec[2] ~= 'in_flight' or tonumber(rec[5]) > now or rec[1] ~= ARGV[2] then
      return {{2, rec}}
    end
    redis.call('HSET', KEYS[1], 'token', ARGV[3], 'lease_expires_at', ARGV[4],
      'expires_at', ARGV[5])
    if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
    return {{4, rec[4], rec[8]}}
  end
  redis.call('DEL', KEYS[1])  -- past retention, or malformed: replaced whole, never merged into
elseif v then
  if not is_record(v) then return {{0, v}} end
  if struct.unpack('<d', v, 52) > now then
    local fl = struct.unpack('<I4', v, 60)
    if string.sub(v, 2, 2) ~= 'i' or struct.unpack('<d', v, 44) > now
        or string.sub(v, {layout.SIZE + 1}, {layout.SIZE} + fl) ~= ARGV[2] then
      return {{0, v}}
    end
    local n = ARGV[7]
    set_record(string.sub(v, 1, 3) .. string.sub(n, 4, 35) .. string.sub(v, 36, 43)
      .. string.sub(n, 44, 59) .. string.sub(v, 60), ARGV[6])
    return {{3, v}}
  end
end
set_record(ARGV[7], ARGV[6])
return {{1}}
"""
)

# The layout-1 check shared by complete, release, renew and checkpoint: the record is live, in
# flight, and held by ARGV[2] (the caller's token). `rec` is HMGET token, state, expires_at, ...
_HELD = """
if rec[1] ~= ARGV[2] or rec[2] ~= 'in_flight' or tonumber(rec[3]) <= tonumber(ARGV[1]) then
  return {0}
end
"""


def _either(hash_body: str, string_body: str, *prelude: str) -> str:
    """Return a script that runs `hash_body` on a layout-1 hash, `string_body` on anything else."""
    return (
        "".join(prelude)
        + layout.HEAD
        + "local function hash_layout()\n"
        + hash_body
        + "end\n"
        + _GET
        + "if type(v) == 'table' then return hash_layout() end\n"
        + string_body
    )


# COMPLETE, RENEW and CHECKPOINT return {0} when fenced, else {1, <value>} for layout 2 (as
# COMPLETE read it, as RENEW and CHECKPOINT left it), or {1, <HELD>} for layout 1: fingerprint,
# created_at, lease_expires_at, expires_at and recovery_point as the script left them.

# ARGV: now, token, outcome, expires_at, channel, ttl_ms, the deadlines packed (now, expires_at).
# Publishes on the channel if a waiter marked the record.
COMPLETE = _either(
    """
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
""",
    layout.HELD
    + """
set_record(string.sub(v, 1, 1) .. 'd' .. string.sub(v, 3, 43) .. ARGV[7] .. string.sub(v, 60)
  .. ARGV[3], ARGV[6])
if string.sub(v, 3, 3) == '1' then
  redis.call('PUBLISH', ARGV[5], 'done')
end
return {1, v}
""",
    _EXPIRE,
    _SET,
)

# ARGV: now, token, channel. Returns {0} when fenced, else {1}; publishes if a waiter marked it.
RELEASE = _either(
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
""",
    layout.HELD
    + """
redis.call('DEL', KEYS[1])
if string.sub(v, 3, 3) == '1' then
  redis.call('PUBLISH', ARGV[3], 'released')
end
return {1}
""",
)

# Sets `ms`, the physical expiry of a record ending at `expires_at` (Lua's `physical_ttl`).
_PHYSICAL = f"""
local ms = math.ceil((expires_at - now) * 1000) + {GRACE_MS}
if ms < 1 then ms = 1 end
if ms < {_PERSIST_FROM_MS:.0f} then ms = string.format('%d', ms) else ms = '0' end
"""

# ARGV: now, token, lease_expires_at (now + lease). Returns {1, ...} or {0}.
# Retention moves by as much as the lease moved forward, as in the memory store.
RENEW = _either(
    f"""
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'lease_expires_at', 'fingerprint', 'created_at', 'recovery_point')
{_HELD}
local now = tonumber(ARGV[1])
local expires_at = tonumber(rec[3]) + math.max(0, tonumber(ARGV[3]) - tonumber(rec[4]))
local stored = string.format('%.17g', expires_at)
redis.call('HSET', KEYS[1], 'lease_expires_at', ARGV[3], 'expires_at', stored)
{_PHYSICAL}
expire(ms)
return {{1, rec[5], rec[6], ARGV[3], stored, rec[7]}}
""",
    layout.HELD
    + """
local now = tonumber(ARGV[1])
local lease, expires_at = struct.unpack('<dd', v, 44)
local new_lease = tonumber(ARGV[3])
expires_at = expires_at + math.max(0, new_lease - lease)
"""
    + _PHYSICAL
    + """
local n = string.sub(v, 1, 43) .. struct.pack('<dd', new_lease, expires_at) .. string.sub(v, 60)
set_record(n, ms)
return {1, n}
""",
    _EXPIRE,
    _SET,
)

# ARGV: now, token, recovery_point. Returns {1, ...} or {0}.
CHECKPOINT = _either(
    """
local rec = redis.call('HMGET', KEYS[1], 'token', 'state', 'expires_at',
  'fingerprint', 'created_at', 'lease_expires_at')
"""
    + _HELD
    + """
redis.call('HSET', KEYS[1], 'recovery_point', ARGV[3])
return {1, rec[4], rec[5], rec[6], rec[3], ARGV[3]}
""",
    layout.HELD
    + f"""
local fl, nl, sl, kl = struct.unpack('<I4I4I4I4', v, 60)
local n = string.sub(v, 1, 75) .. struct.pack('<i4', #ARGV[3])
  .. string.sub(v, {layout.SIZE + 1}, {layout.SIZE} + fl + nl + sl + kl) .. ARGV[3]
redis.call('SET', KEYS[1], n, 'KEEPTTL')
return {{1, n}}
""",
)

# A waiter's read, once it is subscribed: returns the record (a layout-2 value, nil, or the
# layout-1 <RECORD_FIELDS>) and marks an in-flight record watched, so its completion or release
# publishes. Both scripts are atomic, so either this one runs first (the completion sees the
# mark and publishes to the subscribed waiter) or the completion does (and this one returns the
# outcome). A takeover keeps the mark; a record deleted and claimed anew starts unmarked, and
# the waiter's next read marks it.
WATCH = _either(
    f"""
local rec = {_HMGET_RECORD}
if rec[2] == 'in_flight' then
  redis.call('HSET', KEYS[1], 'watched', '1')
end
return rec
""",
    """
if is_record(v) and string.sub(v, 2, 3) == 'i0' then
  redis.call('SETRANGE', KEYS[1], 2, '1')
end
return v
""",
)

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
PURGE = (
    layout.HEAD
    + f"""
local v = redis.pcall('GETRANGE', KEYS[1], 0, {layout.SIZE - 1})
local expires_at
if type(v) == 'table' then
  expires_at = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
elseif is_record(v) then
  expires_at = struct.unpack('<d', v, 52)
end
if expires_at and expires_at <= tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
)


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


def held(reply: list[Any]) -> list[Any]:
    """Return a holder-only script's fields, or raise `FencedError` if the caller lost."""
    if reply[0] != 1:
        raise FencedError(FENCED)
    return reply[1:]


def fenced_message() -> str:
    """Return the message of the `FencedError` raised to a caller that lost its claim."""
    return FENCED
