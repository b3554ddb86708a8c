"""The decorator when the store fails: fail closed before the call, keep the key after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrysafe import InFlightError, State, StoreUnavailableError, open_store
from retrysafe._decorator import idempotent


def test_b20_unreachable_store_fails_closed_without_running() -> None:
    """If the key cannot be claimed, the function does not run and the caller gets the error."""
    store = open_store("redis://127.0.0.1:1/0?connect_timeout=0.5&socket_timeout=0.5")
    runs: list[str] = []

    @idempotent(store, key="key")
    def charge(key: str) -> str:
        runs.append(key)
        return key

    with pytest.raises(StoreUnavailableError):
        charge("k")
    assert runs == []
    store.close()


def test_b19_outcome_that_cannot_be_stored_still_returns_and_keeps_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The result reaches the caller, the failure is logged, and the key stays in flight."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(url)

    @idempotent(store, key="key", wait=0)
    def charge(key: str) -> str:
        store.close()  # the store goes away after the effect, before the outcome is stored
        return "charged"

    assert charge("k") == "charged"
    assert "Cannot store the outcome" in caplog.text
    reopened = open_store(url)
    try:
        [record] = reopened.list_records()
        assert record.state is State.IN_FLIGHT  # never "not found" while the effect may be done
        retry = idempotent(reopened, key="key", wait=0, namespace=record.identity.namespace)(
            lambda key: "charged again"
        )
        with pytest.raises(InFlightError):
            retry("k")
    finally:
        reopened.close()
