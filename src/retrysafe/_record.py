"""The values the engine and the stores exchange: identities, records and claims."""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from retrysafe._values import quick_init

_LENGTHS = struct.Struct(">Q")  # a part's length, before the part, in an identity's digest

__all__ = ["Claim", "Identity", "Record", "State"]


class State(enum.StrEnum):
    """Where a record stands in its life: claimed and running, or finished with an outcome."""

    IN_FLIGHT = "in_flight"
    DONE = "done"


@quick_init
@dataclass(frozen=True)
class Identity:
    """What a record is looked up by: (namespace, scope, key).

    The namespace separates uses (an app, a function); the scope separates callers (tenants);
    the key is what the caller sent.
    """

    # Slotted by hand rather than `slots=True`, for one slot that is no field: the digest,
    # computed once (a request asks for it several times: its key, its row id, a cache's id).
    __slots__ = ("_digest", "key", "namespace", "scope")
    if TYPE_CHECKING:
        _digest: ClassVar[str]  # to the type checker; at run time, the slot `digest` sets

    namespace: str
    scope: str
    key: str

    def __reduce__(self) -> tuple[type[Identity], tuple[str, str, str]]:
        # Pickled and copied by its fields: the default would set the slots one by one,
        # which a frozen class refuses.
        return (Identity, (self.namespace, self.scope, self.key))

    def digest(self) -> str:
        """Return a SHA-256 hex digest of the three parts, safe to use as a storage key (B34)."""
        try:
            return self._digest
        except AttributeError:
            pass
        # Each part prefixed by its length in 8 bytes, so no two identities join alike.
        namespace = self.namespace.encode("utf-8", "surrogatepass")
        scope = self.scope.encode("utf-8", "surrogatepass")
        key = self.key.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(
            _LENGTHS.pack(len(namespace)) + namespace + _LENGTHS.pack(len(scope)) + scope
            + _LENGTHS.pack(len(key)) + key
        ).hexdigest()  # fmt: skip
        object.__setattr__(self, "_digest", digest)
        return digest


@quick_init
@dataclass(frozen=True, slots=True)
class Record:
    """One idempotency record as stored.

    Attributes:
        identity: the (namespace, scope, key) it belongs to.
        fingerprint: the digest of the request that claimed it.
        state: in flight or done.
        token: the fencing token of the current holder (kept once done, for audit).
        created_at: when it was first claimed (seconds since the epoch).
        lease_expires_at: when an in-flight claim may be taken over.
        expires_at: when the record stops existing (retention); absent on read after it.
        outcome: the stored outcome once done (an encoded response or return value).
        recovery_point: the last committed phase of a multi-phase operation, if any.
    """

    identity: Identity
    fingerprint: str
    state: State
    token: str
    created_at: float
    lease_expires_at: float
    expires_at: float
    outcome: bytes | None = None
    recovery_point: str | None = None

    @property
    def size(self) -> int:
        """Return the stored outcome's size in bytes."""
        return 0 if self.outcome is None else len(self.outcome)


@quick_init
@dataclass(frozen=True, slots=True)
class Claim:
    """What `claim` returns.

    Attributes:
        record: the record as it stands after the claim (the caller's own, or the existing one).
        acquired: whether the caller now holds the record and must run the operation.
        taken_over: whether it was acquired by taking over an expired lease.
    """

    record: Record
    acquired: bool
    taken_over: bool = False

    @property
    def token(self) -> str:
        """Return the fencing token to pass to complete, release and renew."""
        return self.record.token
