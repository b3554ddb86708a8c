"""The bound on a lease, a retention and a wait (B21: retention is configurable per route and
per decorator; B16: leases): positive (a wait may be 0), finite and at most 100 years, checked
on every face when it is configured, so no record is kept until a date no tool can show."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from retrysafe import ConfigurationError, Identity, idempotent, open_store, transactions
from retrysafe._clock import MAX_DURATION
from retrysafe._http import Settings
from retrysafe._http.settings import RouteSettings

TOO_LONG = [MAX_DURATION * 1.001, 1e12, math.inf, math.nan]


@pytest.mark.parametrize("value", TOO_LONG)
@pytest.mark.parametrize("name", ["lease", "retention", "wait"])
def test_b21_the_decorator_refuses_a_duration_past_100_years(name: str, value: float) -> None:
    """`@idempotent(retention=1e12)` is a `ConfigurationError` when the function is decorated."""
    store = open_store("memory://")
    with pytest.raises(ConfigurationError, match="at most 3155760000 s"):
        idempotent(store=store, key=lambda: "k", **{name: value})  # type: ignore[arg-type]


def test_b21_the_decorator_takes_100_years() -> None:
    """The bound itself is accepted, and the outcome is replayed."""
    store = open_store("memory://")
    calls: list[int] = []

    @idempotent(store=store, key=lambda: "k", retention=MAX_DURATION, lease=MAX_DURATION)
    def run() -> int:
        calls.append(1)
        return len(calls)

    assert (run(), run(), calls) == (1, 1, [1])


@pytest.mark.parametrize("value", TOO_LONG)
@pytest.mark.parametrize("name", ["lease", "retention", "wait"])
def test_b21_http_settings_refuse_a_duration_past_100_years(name: str, value: float) -> None:
    """The middleware's settings, and a route's, refuse it as they are made."""
    with pytest.raises(ConfigurationError, match="at most 3155760000 s"):
        Settings(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="at most 3155760000 s"):
        Settings().with_route(RouteSettings(**{name: value}))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", TOO_LONG)
@pytest.mark.parametrize("name", ["lease", "retention"])
def test_b21_a_transaction_refuses_a_duration_past_100_years(
    name: str, value: float, tmp_path: Path
) -> None:
    """Transactional mode refuses it before any I/O."""
    connection = sqlite3.connect(tmp_path / "app.db")
    try:
        with pytest.raises(ConfigurationError, match="at most 3155760000 s"):
            transactions.sqlite(
                connection, identity=Identity("orders", "t", "k"), fingerprint="f",
                **{name: value},  # type: ignore[arg-type]
            )  # fmt: skip
    finally:
        connection.close()
