"""`quick_init` values behave as the frozen slotted dataclasses they are."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from retrysafe._record import Claim, Identity, Record, State
from retrysafe._values import quick_init


def _record(**changes: object) -> Record:
    record = Record(Identity("n", "s", "k"), "fp", State.IN_FLIGHT, "t", 1.0, 2.0, 3.0)
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_quick_values_keep_defaults_equality_hashing_and_stay_frozen() -> None:
    """A record built by the quick `__init__` takes positional and keyword arguments and the
    defaults, compares and hashes by value, pickles, is replaced field by field, and refuses
    assignment."""
    record = Record(
        identity=Identity("n", "s", "k"),
        fingerprint="fp",
        state=State.IN_FLIGHT,
        token="t",
        created_at=1.0,
        lease_expires_at=2.0,
        expires_at=3.0,
    )
    assert record == _record()
    assert (record.outcome, record.recovery_point) == (None, None)
    assert hash(record.identity) == hash(Identity("n", "s", "k"))
    assert pickle.loads(pickle.dumps(record)) == record  # noqa: S301 - our own bytes
    assert _record(outcome=b"x").outcome == b"x"
    assert Claim(record, acquired=True).taken_over is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.token = "other"  # type: ignore[misc]
    with pytest.raises(TypeError, match="missing 6 required positional arguments"):
        Record(Identity("n", "s", "k"))  # type: ignore[call-arg]


def test_quick_init_refuses_a_class_it_cannot_speed_up_safely() -> None:
    """Only frozen slotted dataclasses with plain fields get the quick `__init__`."""

    @dataclasses.dataclass
    class Mutable:
        value: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        values: list[int] = dataclasses.field(default_factory=list)

    for cls in (Mutable, Factory):
        with pytest.raises(TypeError):
            quick_init(cls)


def test_b34_an_identity_digest_is_the_length_prefixed_sha256_and_kept() -> None:
    """The digest, every store's record id, is SHA-256 over each part's length and UTF-8 bytes
    (lone surrogates kept), the same as ever; it is computed once per identity."""
    import hashlib

    identity = Identity("orders", "c:\udcff", "k\x00")
    hasher = hashlib.sha256()
    for part in ("orders", "c:\udcff", "k\x00"):
        raw = part.encode("utf-8", "surrogatepass")
        hasher.update(len(raw).to_bytes(8, "big") + raw)
    assert identity.digest() == hasher.hexdigest()
    assert identity.digest() is identity.digest()
    copied = pickle.loads(pickle.dumps(identity))  # noqa: S301 - our own bytes
    assert copied == identity
    assert copied.digest() == identity.digest()
    assert dataclasses.asdict(identity) == {
        "namespace": "orders",
        "scope": "c:\udcff",
        "key": "k\x00",
    }
