"""A long `Retry-After` (SPEC B33): cut to `retry_after_max`, and waited only if the wait ends
within the total-time bound, as docs/client.md says."""

from __future__ import annotations

import time

import pytest

from retrysafe.client import RetryPolicy
from tests.client.conftest import Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face


@pytest.mark.parametrize("name", FACES)
def test_b33_a_retry_after_that_cannot_fit_the_bound_returns_the_answer_at_once(
    name: str, scripted: Scripted
) -> None:
    """With the defaults (`retry_after_max` and `timeout` both 30 s), `Retry-After: 99999` is
    cut to 30 s, which cannot end within what the attempt left of the bound: the 503 is
    returned at once, on the real clock (a wait would take 30 s)."""
    url, script = scripted.script(Answer(503, {"Retry-After": "99999"}), Answer(201))
    started = time.monotonic()
    outcome = Face(name, RetryPolicy(), None).request("POST", url, content=b"x")
    assert outcome.status == 503
    assert time.monotonic() - started < 10.0
    assert len(script.seen) == 1


@pytest.mark.parametrize("name", FACES)
def test_b33_a_retry_after_is_cut_to_its_maximum_when_the_bound_allows(
    name: str, scripted: Scripted, sleeps: Sleeps
) -> None:
    """With a bound above `retry_after_max`, the same answer is waited for 30 s and retried."""
    url, script = scripted.script(Answer(503, {"Retry-After": "99999"}), Answer(201))
    outcome = Face(name, RetryPolicy(timeout=120.0), sleeps).request("POST", url, content=b"x")
    assert outcome.status == 201
    assert sleeps.delays == [30.0]
    assert len(script.seen) == 2
