"""The store contract (`test_contract.py`) on MySQL again, through `?encryption_key_env=NAME`
(both faces), and no outcome in clear in the table: encryption changes no behaviour of the
MySQL store. (`test_encryption_contract.py` does the same for the other server-backed stores.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe import Identity, open_store
from retrysafe.stores.encrypted import Keyring
from tests.conftest import fresh_store_url
from tests.stores.test_contract import *  # noqa: F403 - the contract's tests, collected here
from tests.stores.test_mysql import query

pytestmark = pytest.mark.mysql

MARKER = b"MARKER-5d1c-card-4242424242424242"
"""A body whose bytes must never show in the table."""


@pytest.fixture(params=["mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The MySQL store."""
    return str(request.param)


@pytest.fixture
def store_url(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh MySQL store's URL, with its outcomes encrypted."""
    monkeypatch.setenv("RS_CONTRACT_KEYS", Keyring.generate_key())
    with fresh_store_url(backend, request, tmp_path) as url:
        yield f"{url}&encryption_key_env=RS_CONTRACT_KEYS"


def test_an_encrypted_outcome_is_nowhere_in_the_table(store_url: str, mysql_url: str) -> None:
    """The outcome stored through an encrypted MySQL store is not in any column of its row,
    while the store still replays it."""
    store = open_store(store_url)
    identity = Identity("payments", "tenant-a", "order-1")
    try:
        claim = store.claim(identity, "fp", lease=30, retention=3600)
        store.complete(identity, claim.token, MARKER, retention=3600)
        record = store.get(identity)
        assert record is not None
        assert record.outcome == MARKER
    finally:
        store.close()
    table = store_url.split("table=", 1)[1].split("&", 1)[0]
    rows = query(mysql_url, f"SELECT * FROM `{table}`")  # noqa: S608 - the test's table
    raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for row in rows for v in row)
    assert b"order-1" in raw  # the reader sees the row: a miss below proves something
    assert MARKER not in raw
