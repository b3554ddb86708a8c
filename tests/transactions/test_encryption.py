"""Encryption at rest in transactional mode (`encryption=Keyring(...)`): the outcome commits
sealed with the writes, on every driver face of SQLite and PostgreSQL, and fails closed."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import pytest

from retrysafe import RecordUnreadableError, open_store
from retrysafe._encryption import sealed_key_id
from retrysafe.stores.encrypted import Keyring
from tests.transactions.conftest import Face, Paid, _Plan

KEYRING = Keyring([Keyring.generate_key()])


@dataclass
class EncryptedFace(Face):
    """A driver face whose transactions are given `keyring` (`encryption=`)."""

    keyring: Keyring | None = None

    def _pay(self, options: dict[str, Any], plan: _Plan) -> Paid:
        return super()._pay({**options, "encryption": self.keyring}, plan)

    async def _apay(self, options: dict[str, Any], plan: _Plan) -> Paid:
        return await super()._apay({**options, "encryption": self.keyring}, plan)


def encrypted(face: Face, keyring: Keyring | None = KEYRING) -> EncryptedFace:
    """`face`, with its transactions encrypted under `keyring` (None: in clear)."""
    return EncryptedFace(face.name, face.database, face.clock, keyring)


def records_table(face: Face) -> bytes:
    """Every byte of every row of the records table, read past retrysafe."""
    rows = face.database.execute(f"SELECT * FROM {face.database.table}")  # noqa: S608 - a unique_name() table
    return b"".join(
        bytes(cell) if isinstance(cell, bytes | memoryview) else str(cell).encode()
        for row in rows
        for cell in row
    )


def test_the_outcome_commits_sealed_and_replays_in_clear(face: Face) -> None:
    """The outcome is in the records table only sealed, while one stored in clear beside it
    shows; a duplicate replays it in clear, and an encrypted store on the table reads it."""
    paid = encrypted(face).pay("k-1")
    clear = encrypted(face, None).pay("k-clear")
    contents = records_table(face)
    assert clear.payment_id.encode() in contents
    assert paid.payment_id.encode() not in contents
    assert encrypted(face).pay("k-1") == Paid(True, paid.outcome)
    with contextlib.closing(
        open_store(face.database.url, encryption=KEYRING, clock=face.clock)
    ) as store:
        record = store.get(face.identity("k-1"))
        assert record is not None
        assert record.outcome == paid.outcome
    assert len(face.database.payment_rows()) == 2


def test_a_transaction_replays_what_an_encrypted_store_stored(face: Face) -> None:
    """An outcome the store sealed (the middleware's) replays in transactional mode."""
    identity = face.identity("k-store")
    url = face.database.url
    with contextlib.closing(open_store(url, encryption=KEYRING, clock=face.clock)) as store:
        claim = store.claim(identity, "amount=100", lease=30, retention=3600)
        store.complete(identity, claim.token, b'{"id": "from-store"}', retention=3600)
    with contextlib.closing(open_store(url, clock=face.clock)) as bare:
        record = bare.get(identity)
        assert record is not None
        assert record.outcome is not None
        assert sealed_key_id(record.outcome) is not None
    assert encrypted(face).pay("k-store") == Paid(True, b'{"id": "from-store"}')
    assert face.database.payment_rows() == []


@pytest.mark.parametrize("change", ["tampered", "moved", "unknown key"])
def test_a_record_that_does_not_open_raises_and_writes_nothing(face: Face, change: str) -> None:
    """A duplicate that finds an altered outcome, one moved from another key, or one sealed
    with a key it lacks raises RecordUnreadableError, and its writes roll back."""
    encrypted(face).pay("k-1")
    encrypted(face).pay("k-2")
    table, mark = face.database.table, face.database.mark
    keyring = KEYRING
    if change == "tampered":
        face.database.execute(f"UPDATE {table} SET outcome = {_one_more_byte(face)}")  # noqa: S608 - a unique_name() table
    elif change == "moved":
        face.database.execute(
            f"UPDATE {table} SET outcome = (SELECT outcome FROM {table} WHERE key = {mark}) "  # noqa: S608 - a unique_name() table
            f"WHERE key = {mark}",
            (b"k-2", b"k-1"),
        )
    else:
        keyring = Keyring([Keyring.generate_key(), Keyring.generate_key()])
    unreadable = r"fails authentication|which the keyring does not"
    with pytest.raises(RecordUnreadableError, match=unreadable):
        encrypted(face, keyring).pay("k-1", write_on_replay=True)
    assert len(face.database.payment_rows("k-1")) == 1


def _one_more_byte(face: Face) -> str:
    """The outcome with a zero byte appended, as SQL (SQLite's || makes text: cast it back)."""
    if face.database.kind == "sqlite":
        return "CAST(outcome || x'00' AS BLOB)"
    return "outcome || '\\x00'::bytea"
