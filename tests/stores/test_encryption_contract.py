"""The store contract (`test_contract.py`), proven again through `?encryption_key_env=NAME` on
every server-backed store and both faces: encryption changes no behaviour of a store.

(Memory is proven in `test_encryption.py`: the contract's fixture shares one memory store
only for the bare `memory://` URL.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retrysafe.stores.encrypted import Keyring
from tests.conftest import fresh_store_url
from tests.stores.test_contract import *  # noqa: F403 - the contract's tests, collected here


@pytest.fixture(params=["sqlite", "postgres", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each server-backed store."""
    return str(request.param)


@pytest.fixture
def store_url(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh store's URL on `backend`, with its outcomes encrypted."""
    monkeypatch.setenv("RS_CONTRACT_KEYS", Keyring.generate_key())
    with fresh_store_url(backend, request, tmp_path) as url:
        yield f"{url}{'&' if '?' in url else '?'}encryption_key_env=RS_CONTRACT_KEYS"
