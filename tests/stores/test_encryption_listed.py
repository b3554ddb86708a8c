"""A listed record whose outcome does not open keeps every other field as stored (B24).

`retrysafe keys` and the console list records through `Keyring.open_listed`: a record sealed
with a key the keyring does not hold is shown as an `UnreadableRecord`, its outcome withheld,
and every other field of the record (its state, fencing token, times, recovery point) as the
store holds it. On the SQLite store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from retrysafe import Identity, open_store
from retrysafe._record import Record
from retrysafe.stores.encrypted import EncryptedStore, Keyring, UnreadableRecord

IDENTITY = Identity("payments", "tenant-a", "order-1")


def test_b24_an_unreadable_listed_record_keeps_every_other_field(tmp_path: Path) -> None:
    """Sealed under key A (with a recovery point), listed with key B only: an
    `UnreadableRecord` with no outcome, the sealed bytes as `stored`, and each of `Record`'s
    other fields (whatever fields it has) equal to the raw store's."""
    raw = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        sealed = EncryptedStore(raw, Keyring([Keyring.generate_key()]))
        claim = sealed.claim(IDENTITY, "fp", lease=30, retention=3600)
        sealed.checkpoint(IDENTITY, claim.token, "charged")
        sealed.complete(IDENTITY, claim.token, b"the outcome", retention=3600)
        stored = raw.get(IDENTITY)
        listed = EncryptedStore(raw, Keyring([Keyring.generate_key()])).list_records()
    finally:
        raw.close()
    assert stored is not None
    assert stored.recovery_point == "charged"
    [record] = listed
    assert isinstance(record, UnreadableRecord)
    assert record.outcome is None
    assert record.stored == stored.outcome
    assert record.reason
    for field in dataclasses.fields(Record):
        if field.name != "outcome":
            assert getattr(record, field.name) == getattr(stored, field.name), field.name
