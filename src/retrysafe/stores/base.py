"""The store contract: a few primitives, each atomic in the backend itself.

Every store (memory, SQLite, PostgreSQL, MySQL, Redis) has an async face, written once in
`stores/_async/`, and a sync face generated from it into `stores/_sync/` by `scripts/unasync.py`.
Both faces implement the protocols below with identical behaviour; one contract suite
(`tests/stores/test_contract.py`) runs against every backend and both faces.

Time comes from the store's `clock`, so tests expire leases and retention without sleeping.

The primitives:

- `claim`: insert the record if absent, or take it over if its retention has ended or its lease
  has expired (same fingerprint only), with a new fencing token; otherwise return the existing
  record untouched. One atomic operation (B7).
- `complete(token)`, `release(token)`, `renew(token)`, `checkpoint(token)`: act only for the
  current token holder; anyone else gets `FencedError` (B17).
- `get`, `delete`, `purge_expired(limit)`, `list_records`, `stats`: reads and admin.
- `wait`: block until a record stops being in flight under a live lease, or a timeout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, TypedDict, TypeGuard, Unpack, runtime_checkable
from urllib.parse import parse_qsl

from retrysafe._clock import Clock
from retrysafe._engine import may_take
from retrysafe._errors import ConfigurationError
from retrysafe._record import Claim, Identity, Record, State
from retrysafe._urls import redact_url

__all__ = [
    "FENCED",
    "MAX_TIMEOUT",
    "RECORD_FIELDS",
    "AsyncStore",
    "Listing",
    "ListingOptions",
    "Store",
    "StoreStats",
    "check_timeouts",
    "decide_claim",
    "decode_part",
    "encode_part",
    "new_token",
    "poll_delays",
    "query_options",
    "running",
    "stats_of",
]


MAX_TIMEOUT: Final = 31_536_000.0
"""The longest timeout a store option takes, in seconds: a year. PyMySQL takes no longer
`connect_timeout`, and longer ones (`inf` above all) overflow the waits of threads and drivers."""
# The words a boolean store URL option takes (`autopipeline=false`), in any case.
_BOOLS: Final = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}

FENCED: Final = "This claim no longer holds the key: its lease was taken over or the record ended."
"""The message of the `FencedError` every store raises to a caller that lost its claim (B17)."""

RECORD_FIELDS: Final = (
    "fingerprint",
    "state",
    "token",
    "created_at",
    "lease_expires_at",
    "expires_at",
    "outcome",
    "recovery_point",
)
"""The fields of a record after its identity, in the order the stores keep them."""

RecordValues: TypeAlias = tuple[str, str, str, float, float, float, bytes | None, str | None]
"""A record's `RECORD_FIELDS` values, its state as a string (see `record_values`)."""


def record_values(record: Record) -> RecordValues:
    """Return `record`'s `RECORD_FIELDS` values, in order, its state as its string value."""
    return (
        record.fingerprint,
        record.state.value,
        record.token,
        record.created_at,
        record.lease_expires_at,
        record.expires_at,
        record.outcome,
        record.recovery_point,
    )


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for the admin CLI.

    Attributes:
        in_flight: records claimed and running (live or expired lease).
        done: records with a stored outcome.
        bytes_stored: the total size of stored outcomes.
        oldest_in_flight_at: when the oldest in-flight record was claimed, if any.
    """

    in_flight: int
    done: int
    bytes_stored: int
    oldest_in_flight_at: float | None


class ListingOptions(TypedDict, total=False):
    """The keyword arguments of `list_records`: `Listing`'s filters and limit, all optional."""

    namespace: str | None
    scope: str | None
    state: State | None
    created_before: float | None
    limit: int


@dataclass(frozen=True, slots=True)
class Listing:
    """What `list_records` asks for: live records matching every filter given, newest first.

    Attributes:
        namespace: only records in this namespace.
        scope: only records in this scope.
        state: only records in this state.
        created_before: only records created before this time.
        limit: the most records returned.
    """

    namespace: str | None = None
    scope: str | None = None
    state: State | None = None
    created_before: float | None = None
    limit: int = 100

    def matches(self, record: Record) -> bool:
        """Return whether `record` passes every filter (its retention is the caller's check)."""
        return (
            (self.namespace is None or record.identity.namespace == self.namespace)
            and (self.scope is None or record.identity.scope == self.scope)
            and (self.state is None or record.state is self.state)
            and (self.created_before is None or record.created_at < self.created_before)
        )

    def newest(self, records: list[Record]) -> list[Record]:
        """Return the `limit` most recently created of `records`."""
        return sorted(records, key=lambda r: r.created_at, reverse=True)[: self.limit]


@runtime_checkable
class AsyncStore(Protocol):
    """The async store contract. See the module docstring for the semantics."""

    clock: Clock

    async def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record (B7, B16)."""
        ...

    async def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done, kept for `retention` seconds."""
        ...

    async def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record so a retry runs again."""
        ...

    async def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease to `lease` seconds from now."""
        ...

    async def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase of a multi-phase operation (B30)."""
        ...

    async def get(self, identity: Identity) -> Record | None:
        """Return the record, or None if absent or past its retention (B21)."""
        ...

    async def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; return whether one existed."""
        ...

    async def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention; return how many."""
        ...

    async def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first, at most `limit`."""
        ...

    async def stats(self) -> StoreStats:
        """Return counts of live records by state, stored bytes, and the oldest in-flight claim."""
        ...

    async def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait until the record is no longer in flight under a live lease, then return it.

        Returns the record as it stands when the wait ends: done, absent (None), in flight with
        an expired lease, or still in flight if `timeout` seconds passed first (B15).
        """
        ...

    async def aclose(self) -> None:
        """Release connections and threads."""
        ...


@runtime_checkable
class Store(Protocol):
    """The sync store contract: `AsyncStore` without `await`."""

    clock: Clock

    def claim(
        self, identity: Identity, fingerprint: str, *, lease: float, retention: float
    ) -> Claim:
        """Claim `identity` atomically, or return the existing record (B7, B16)."""
        ...

    def complete(
        self, identity: Identity, token: str, outcome: bytes, *, retention: float
    ) -> Record:
        """Store `outcome` and mark the record done, kept for `retention` seconds."""
        ...

    def release(self, identity: Identity, token: str) -> None:
        """Delete the in-flight record so a retry runs again."""
        ...

    def renew(self, identity: Identity, token: str, *, lease: float) -> Record:
        """Extend the holder's lease to `lease` seconds from now."""
        ...

    def checkpoint(self, identity: Identity, token: str, recovery_point: str) -> Record:
        """Record the last committed phase of a multi-phase operation (B30)."""
        ...

    def get(self, identity: Identity) -> Record | None:
        """Return the record, or None if absent or past its retention (B21)."""
        ...

    def delete(self, identity: Identity) -> bool:
        """Delete the record whatever its state; return whether one existed."""
        ...

    def purge_expired(self, *, limit: int = 1000) -> int:
        """Delete at most `limit` records past their retention; return how many."""
        ...

    def list_records(self, **filters: Unpack[ListingOptions]) -> list[Record]:
        """Return live records matching every given filter, newest first, at most `limit`."""
        ...

    def stats(self) -> StoreStats:
        """Return counts of live records by state, stored bytes, and the oldest in-flight claim."""
        ...

    def wait(self, identity: Identity, *, timeout: float) -> Record | None:
        """Wait until the record is no longer in flight under a live lease, then return it."""
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...


def new_token() -> str:
    """Return a fresh, unguessable fencing token.

    Random rather than a counter: a record deleted and claimed again must never hand out a token
    that a stale worker of the earlier incarnation still holds.
    """
    return os.urandom(16).hex()  # what `secrets.token_hex(16)` does, two calls shorter


def decide_claim(
    identity: Identity,
    fingerprint: str,
    existing: Record | None,
    now: float,
    *,
    lease: float,
    retention: float,
) -> Claim:
    """Return what a claim on `identity` does, given its live record (`existing`) at `now`.

    The existing record untouched if the claim may not take it (`may_take`); otherwise a new
    in-flight record with a fresh token, for the caller to write. A takeover continues the
    same operation: it keeps the creation time and the recovery point, so the new holder
    resumes after the last committed phase (B30).
    """
    if existing is not None and not may_take(existing, fingerprint, now):
        return Claim(existing, acquired=False)
    record = Record(
        identity=identity,
        fingerprint=fingerprint,
        state=State.IN_FLIGHT,
        token=new_token(),
        created_at=now if existing is None else existing.created_at,
        lease_expires_at=now + lease,
        expires_at=now + lease + retention,
        recovery_point=None if existing is None else existing.recovery_point,
    )
    return Claim(record, acquired=True, taken_over=existing is not None)


def encode_part(part: str) -> bytes:
    """Encode an identity part for storage; any string round-trips, NUL and lone surrogates too."""
    return part.encode("utf-8", "surrogatepass")


def decode_part(raw: bytes) -> str:
    """Decode what `encode_part` stored."""
    return raw.decode("utf-8", "surrogatepass")


def running(record: Record | None, now: float) -> TypeGuard[Record]:
    """Return whether `record` is in flight under a live lease at `now`: what `wait` waits out."""
    return record is not None and record.state is State.IN_FLIGHT and record.lease_expires_at > now


def poll_delays(first: float = 0.005, cap: float = 0.25) -> Iterator[float]:
    """Yield growing delays for bounded polling (B15: waiting must not busy-spin the store)."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, cap)


def stats_of(records: list[Record]) -> StoreStats:
    """Return the counts `stats` gives for a store that holds just `records` (all live)."""
    in_flight = [r.created_at for r in records if r.state is State.IN_FLIGHT]
    return StoreStats(
        in_flight=len(in_flight),
        done=len(records) - len(in_flight),
        bytes_stored=sum(r.size for r in records),
        oldest_in_flight_at=min(in_flight, default=None),
    )


def query_options(
    query: str, allowed: dict[str, type], *, url: str | None = None
) -> dict[str, object]:
    """Parse a store URL's query string into typed options, refusing unknown ones, values not
    of their type, and, given `url`, an option given twice (which would silently keep one).

    Args:
        query: the URL's query string (`timeout=2&prefix=app`).
        allowed: option name to its type (`float`, `int`, `str`, `bool`). A `bool` is one of
            1, true, yes, on, 0, false, no, off, in any case.
        url: the store URL the query is from, shown without its password when an option is
            given twice in it.
    """
    options: dict[str, object] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        kind = allowed.get(name)
        if kind is None:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigurationError(f"Unknown store URL option {name!r}; known options: {known}.")
        if url is not None and name in options:
            raise ConfigurationError(
                f"Store URL option {name} is given twice in {redact_url(url)!r}."
            )
        try:
            options[name] = _BOOLS[value.lower()] if kind is bool else kind(value)
        except (KeyError, ValueError):
            raise ConfigurationError(
                f"Store URL option {name}={value!r} is not a valid {kind.__name__}."
            ) from None
    return options


def check_timeouts(store: str, timeouts: dict[str, float], *, url: str | None = None) -> None:
    """Refuse a timeout that is not more than 0 and at most `MAX_TIMEOUT` seconds: nan, inf and
    the absurd would be taken, then fail every call later as a raw overflow of a wait.

    Args:
        store: the store's name, for the message (`"PostgreSQL"`).
        timeouts: each timeout option's name and value, in seconds.
        url: the store URL they are from, shown without its password, if any.
    """
    for name, seconds in timeouts.items():
        if not 0 < seconds <= MAX_TIMEOUT:
            where = "" if url is None else f" in {redact_url(url)!r}"
            raise ConfigurationError(
                f"The {store} store's {name} must be more than 0 and at most {MAX_TIMEOUT:.0f} "
                f"seconds (a year), not {seconds}{where}."
            )
