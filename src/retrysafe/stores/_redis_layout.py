"""How the Redis store lays out a record: one string (layout 2), or a hash (layout 1, still read).

Layout 2, written by every claim since it replaced the hash, is one string: a fixed head of 79
bytes, then the variable parts. All integers and floats are little-endian, so the head reads the
same in Python (`struct`) and in the Lua scripts (Redis's `struct` library):

| bytes (from 1, as Lua counts) | what |
|---|---|
| 1 | the layout version, 2 |
| 2 | the state: `i` in flight, `d` done |
| 3 | `1` once a waiter has marked the record (its completion then publishes), else `0` |
| 4-35 | the token (32 hex characters) |
| 36-43, 44-51, 52-59 | created_at, lease_expires_at, expires_at (doubles: exactly the floats) |
| 60-75 | the lengths of fingerprint, namespace, scope and key (unsigned 32-bit) |
| 76-79 | the length of the recovery point, -1 for none (signed 32-bit) |
| 80- | fingerprint, namespace, scope, key, recovery point, then the outcome (the rest; done only) |

So a fresh claim is one `SET key record NX PX ttl GET` (the reply is nil, or the record there),
the scripts read the head at fixed offsets, and a completion rewrites the head and appends the
outcome. Layout 1, one hash with a field per `RECORD_FIELDS` and the identity parts, was written
by earlier releases: those records are read, completed, renewed, released, listed and purged
where they are (a hash is answered WRONGTYPE by the string commands), until they expire.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from retrysafe._errors import StoreError
from retrysafe._record import Identity, Record, State
from retrysafe.stores.base import RECORD_FIELDS, decode_part, encode_part

__all__ = [
    "HEAD",
    "HELD",
    "SIZE",
    "VERSION",
    "encode_claim",
    "held_from_string",
    "held_record",
    "is_wrong_type",
    "outcome_size",
    "pack_times",
    "record_from_fields",
    "record_from_string",
    "record_from_values",
]

VERSION = 2
_HEAD = struct.Struct("<3s32sdddIIIIi")
SIZE = _HEAD.size
"""Bytes in the fixed head (79)."""
_TIMES = struct.Struct("<dd")
_VERSION_BYTE = bytes((VERSION,))
_IN_FLIGHT = _VERSION_BYTE + b"i0"
_STATES = {b"i": State.IN_FLIGHT, b"d": State.DONE}
_HASH_STATES = {state.value.encode(): state for state in State}
_HASH_FIELDS = tuple(name.encode() for name in RECORD_FIELDS)  # a layout-1 hash's fields

# The Lua that reads the head: `v` is the value GET returned (false if none).
HEAD = f"""
local function is_record(v)
  return v and #v >= {SIZE} and string.byte(v, 1) == {VERSION}
end
"""

# The holder check of complete, release, renew and checkpoint on a layout-2 value `v`: a record,
# in flight, held by ARGV[2] (the caller's token), and not past its retention at ARGV[1] (now).
HELD = """
if not is_record(v) or string.sub(v, 2, 2) ~= 'i' or string.sub(v, 4, 35) ~= ARGV[2]
    or struct.unpack('<d', v, 52) <= tonumber(ARGV[1]) then
  return {0}
end
"""


def encode_claim(
    token: str,
    fingerprint: bytes,
    parts: tuple[bytes, bytes, bytes],
    *,
    created_at: float,
    lease_expires_at: float,
    expires_at: float,
) -> bytes:
    """Return a fresh in-flight record, unwatched, without a recovery point or an outcome."""
    namespace, scope, key = parts
    head = _HEAD.pack(
        _IN_FLIGHT,
        token.encode("ascii"),
        created_at,
        lease_expires_at,
        expires_at,
        len(fingerprint),
        len(namespace),
        len(scope),
        len(key),
        -1,
    )
    return b"".join((head, fingerprint, namespace, scope, key))


def pack_times(lease_expires_at: float, expires_at: float) -> bytes:
    """Return the two deadlines as they sit in the head (bytes 44-59)."""
    return _TIMES.pack(lease_expires_at, expires_at)


def record_from_string(value: bytes, identity: Identity | None = None) -> Record:
    """Return the record in a layout-2 value; `identity` saves decoding it again."""
    if value[:1] != _VERSION_BYTE:
        raise StoreError(f"A Redis record is malformed (layout {value[:1]!r}); delete it.")
    try:
        head, token, created_at, lease_expires_at, expires_at, fl, nl, sl, kl, rl = (
            _HEAD.unpack_from(value)
        )
        state = _STATES[head[1:2]]
        end = SIZE + fl
        fingerprint = decode_part(value[SIZE:end])
        if identity is None:
            identity = Identity(
                decode_part(value[end : end + nl]),
                decode_part(value[end + nl : end + nl + sl]),
                decode_part(value[end + nl + sl : end + nl + sl + kl]),
            )
        end += nl + sl + kl
        recovery_point = None
        if rl >= 0:
            recovery_point = decode_part(value[end : end + rl])
            end += rl
        outcome = value[end:] if state is State.DONE else None
        return Record(  # positional, in `RECORD_FIELDS` order
            identity, fingerprint, state, token.decode("ascii"), created_at, lease_expires_at,
            expires_at, outcome, recovery_point,
        )  # fmt: skip
    except (IndexError, KeyError, ValueError, struct.error) as error:
        raise StoreError(f"A Redis record is malformed ({error!r}); delete it.") from error


def held_from_string(value: bytes) -> tuple[str, float, float, float, str | None]:
    """Return what a holder's record keeps from a layout-2 value: fingerprint, created_at,
    lease_expires_at, expires_at and recovery point (no `Record` built: the caller builds its
    own). The value is one a holder-only script accepted: a well-formed in-flight record."""
    _, _, created_at, lease_expires_at, expires_at, fl, nl, sl, kl, rl = _HEAD.unpack_from(value)
    recovery_point = None
    if rl >= 0:
        start = SIZE + fl + nl + sl + kl
        recovery_point = decode_part(value[start : start + rl])
    fingerprint = decode_part(value[SIZE : SIZE + fl])
    return fingerprint, created_at, lease_expires_at, expires_at, recovery_point


def outcome_size(head: bytes, length: int) -> tuple[bytes, float, float, int] | None:
    """Return state, created_at, expires_at and outcome bytes from a value's head and length
    (None if it is not a layout-2 record)."""
    if len(head) < SIZE or head[0] != VERSION:
        return None
    flags, _, created_at, _, expires_at, fl, nl, sl, kl, rl = _HEAD.unpack_from(head)
    state = flags[1:2]
    size = length - SIZE - fl - nl - sl - kl - max(rl, 0) if state == b"d" else 0
    return state, created_at, expires_at, size


def is_syntax_error(error: Exception) -> bool:
    """Return whether Redis refused a command's options: `SET ... NX GET` before Redis 7.0."""
    return str(error).lower().startswith(("err syntax error", "syntax error"))


def is_wrong_type(error: Exception) -> bool:
    """Return whether a Redis error says the key holds another type (a layout-1 hash)."""
    return str(error).startswith("WRONGTYPE")


def record_from_fields(fields: Mapping[bytes, bytes], identity: Identity | None = None) -> Record:
    """Return the record stored in a hash (HGETALL); `identity` saves decoding it again."""
    if identity is None:
        try:
            parts = (decode_part(fields[name]) for name in (b"namespace", b"scope", b"key"))
            identity = Identity(*parts)
        except KeyError as error:
            raise StoreError(f"A Redis record is malformed ({error!r}); delete it.") from error
    return record_from_values([fields.get(name) for name in _HASH_FIELDS], identity)


def record_from_values(values: Sequence[bytes | None], identity: Identity) -> Record:
    """Return the record from the values of `RECORD_FIELDS` (HMGET, or a script's reply)."""
    fingerprint, state, token, created_at, lease_expires_at, expires_at, outcome, recovery = values
    try:
        return Record(  # positional, in `RECORD_FIELDS` order
            identity,
            decode_part(fingerprint),  # type: ignore[arg-type]
            _HASH_STATES[state],  # type: ignore[index]
            token.decode(),  # type: ignore[union-attr]
            float(created_at),  # type: ignore[arg-type]
            float(lease_expires_at),  # type: ignore[arg-type]
            float(expires_at),  # type: ignore[arg-type]
            outcome,
            None if recovery is None else decode_part(recovery),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise StoreError(f"A Redis record is malformed ({error!r}); delete it.") from error


def held_record(  # noqa: PLR0917 - one helper for four primitives
    fields: list[Any],
    identity: Identity,
    token: str,
    state: State,
    outcome: bytes | None = None,
    times: tuple[float, float] | None = None,
) -> Record:
    """Return the caller's record from what a holder-only script returns (`_redis_lua`): the
    layout-2 value (with `times`, its new deadlines, if they moved), or the layout-1 fields."""
    if len(fields) == 1:  # layout 2: the value
        fingerprint, created_at, lease_expires_at, expires_at, recovery_point = held_from_string(
            fields[0]
        )
        if times is not None:
            lease_expires_at, expires_at = times
    else:
        fingerprint = decode_part(fields[0])
        created_at, lease_expires_at, expires_at = map(float, fields[1:4])
        recovery_point = None if fields[4] is None else decode_part(fields[4])
    return Record(  # positional, in `RECORD_FIELDS` order
        identity, fingerprint, state, token, created_at, lease_expires_at, expires_at, outcome,
        recovery_point,
    )  # fmt: skip


def live_record(
    found: bytes | list[bytes | None] | None, identity: Identity, now: float
) -> Record | None:
    """Return the record read (a layout-2 value, layout-1 `RECORD_FIELDS` values, or None),
    or None if absent or past retention at `now`."""
    if found is None:
        return None
    if isinstance(found, bytes):
        record = record_from_string(found, identity)
    elif found[5] is None:
        if any(value is not None for value in found):
            raise StoreError("A Redis record is malformed (no expires_at); delete it.")
        return None
    else:
        record = record_from_values(found, identity)
    return record if record.expires_at > now else None


def identity_parts(identity: Identity) -> tuple[bytes, bytes, bytes]:
    """Return the identity's parts as stored (for `keys list`)."""
    return encode_part(identity.namespace), encode_part(identity.scope), encode_part(identity.key)
