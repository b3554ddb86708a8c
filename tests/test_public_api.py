"""The public surface: what `retrysafe` exports, and the one error root."""

from __future__ import annotations

import inspect

import pytest

import retrysafe
from retrysafe import _errors


def test_all_is_sorted_and_importable() -> None:
    """`retrysafe.__all__` is sorted and every name in it exists."""
    assert list(retrysafe.__all__) == sorted(retrysafe.__all__)
    for name in retrysafe.__all__:
        assert hasattr(retrysafe, name), name


def test_every_public_member_is_in_all() -> None:
    """No public attribute of the package is left out of `__all__` by accident."""
    public = {
        name
        for name, value in vars(retrysafe).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public <= set(retrysafe.__all__)


def test_every_error_has_the_one_root() -> None:
    """Every exception retrysafe defines derives from IdempotencyError."""
    errors = [
        value
        for value in vars(_errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(errors) > 5
    for error in errors:
        assert issubclass(error, retrysafe.IdempotencyError), error


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://localhost/db", "Unknown store URL scheme"),
        ("nonsense", "Unknown store URL scheme"),
        ("memory://somewhere", "just 'memory://'"),
    ],
)
def test_bad_store_url_is_a_configuration_error(url: str, message: str) -> None:
    """A store URL that names no store, or misuses one, is refused with a precise message."""
    with pytest.raises(retrysafe.ConfigurationError, match=message):
        retrysafe.open_store(url)
    with pytest.raises(ValueError, match=message):
        retrysafe.open_async_store(url)
