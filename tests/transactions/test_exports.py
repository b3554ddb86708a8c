"""The public surface of `retrysafe.transactions`: sorted exports, drivers loaded lazily."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

MODULES = [
    "retrysafe.transactions",
    "retrysafe.transactions.phases",
    "retrysafe.transactions.writes",
    "retrysafe.transactions.asgi",
    "retrysafe.transactions.fastapi",
    "retrysafe.transactions.flask",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_is_sorted_complete_and_importable(name: str) -> None:
    """Each module's `__all__` is sorted, names only what exists, and misses nothing public."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported)
    for member in exported:
        assert hasattr(module, member), member
    defined_here = {
        member
        for member, value in vars(module).items()
        if not member.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined_here <= set(exported)


def test_importing_does_not_load_optional_drivers() -> None:
    """`import retrysafe.transactions` loads neither psycopg nor SQLAlchemy."""
    code = (
        "import sys, retrysafe.transactions\n"
        "loaded = [m for m in ('psycopg', 'sqlalchemy', 'fastapi', 'flask') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
