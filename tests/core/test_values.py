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
