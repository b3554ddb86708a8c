"""The proxy tests' harness: a proxy that fails to start says why (`start_proxies`).

A proxy process that exits before it announces its port must fail the test with what it wrote
on stderr (its error), not with an error of the harness's own that hides it; a proxy started
beside it is stopped.
"""

from __future__ import annotations

import pytest

from tests.proxy.conftest import Upstream, start_proxies


def test_a_proxy_that_fails_to_start_reports_its_stderr(upstream: Upstream) -> None:
    """One proxy of two is given a store URL of a scheme no store has: the failure names the
    scheme the proxy refused, from its stderr, and says which proxy it was."""
    good = (["--upstream", upstream.url, "--store", "memory://"], None)
    bad = (["--upstream", upstream.url, "--store", "nostore://here"], None)
    with pytest.raises(RuntimeError) as failed:
        start_proxies([good, bad])
    message = str(failed.value)
    assert "a proxy did not start" in message
    assert "nostore" in message.split("stderr", 1)[-1], message
