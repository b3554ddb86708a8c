"""docs/testing.md's worked example passes under pytest, as a reader who saved it would run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def test_the_worked_example_passes_under_pytest(pytester: pytest.Pytester) -> None:
    """The page's `test_payments.py` block, saved as that file, passes all its tests."""
    block = re.search(r"```python\n(# test_payments\.py\n.*?)^```", PAGE.read_text(), re.M | re.S)
    assert block is not None, "docs/testing.md lost its test_payments.py block"
    pytester.makepyfile(test_payments=block[1])
    result = pytester.runpytest("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        ["*test_store_kinds?memory? PASSED*", "*test_store_kinds?sqlite? PASSED*"]
    )
