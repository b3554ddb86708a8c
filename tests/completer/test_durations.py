"""The completer's durations (B30: operations left in flight are finished from their recovery
point): a lease, retention or interval that is not a finite number of seconds is refused when
the completer is made, not met as an idle loop that spins (NaN) or never wakes (infinity)."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest

from retrysafe import ConfigurationError
from retrysafe.completer import Completer, Registry

registry = Registry()


@pytest.mark.parametrize(
    "option",
    [
        {"interval": math.nan},
        {"interval": math.inf},
        {"lease": math.nan},
        {"lease": math.inf},
        {"lease": 1e12},
        {"retention": math.nan},
        {"retention": 1e12},
    ],
)
def test_b30_a_duration_that_is_not_finite_is_refused(
    option: dict[str, float], tmp_path: Path
) -> None:
    """NaN passes every `<= 0` check; each such value is a `ConfigurationError` instead."""
    path = tmp_path / "app.db"
    with pytest.raises(ConfigurationError, match=r"finite|at most"):
        Completer(registry, connect=lambda: sqlite3.connect(path), **option)
