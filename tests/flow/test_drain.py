"""B40 with B19: a drain waits, up to a bound, for held outcomes to be stored, and releases none.

`flow.drain(timeout)` (sync, for a WSGI server's shutdown hook) and `await flow.adrain(timeout)`
(async); the ASGI middleware drains at lifespan shutdown, before the app shuts down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest

from retrysafe import State
from tests.flow.conftest import Gap, Served, wait_until

Serve = Callable[..., Served]
_LEFT = "still not stored after draining"


def _drain(service: Served, face: str, timeout: float) -> bool:
    flow = service.middleware.flow
    if face == "wsgi":
        return bool(flow.drain(timeout))
    return bool(service.server.call(flow.adrain(timeout)))  # on the server's loop


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b40_drain_is_bounded_while_the_store_is_gone_then_stores(
    face: str, gap: Gap, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """With the store cut, a drain returns False after its bound and logs; the key stays in
    flight (nothing released). Once the store is back, a drain stores it and returns True."""
    service = serve(face)
    service.app.after_effect = gap.relay.cut
    assert service.post().status_code == 201

    started = time.monotonic()
    assert _drain(service, face, 0.5) is False
    assert time.monotonic() - started >= 0.5
    assert any(_LEFT in r.getMessage() for r in caplog.records)
    assert gap.state("k") is State.IN_FLIGHT

    gap.relay.restore()
    assert _drain(service, face, 20) is True
    assert gap.state("k") is State.DONE
    assert len(service.middleware.flow.holdings) == 0
    assert service.post().headers["idempotent-replayed"] == "true"
    assert service.app.runs == 1


def test_b40_lifespan_shutdown_drains_before_the_app_shuts_down(gap: Gap, serve: Serve) -> None:
    """At lifespan shutdown the middleware drains first: the store just back, the held outcome
    is stored at once, before the app's own shutdown runs."""
    service = serve("asgi", lifespan="on")
    seen: list[State | None] = []
    service.app.on_shutdown = lambda: seen.append(gap.state("k"))
    service.app.after_effect = gap.relay.cut
    assert service.post().status_code == 201
    assert len(service.middleware.flow.holdings) == 1
    # After six failed attempts the next retry is 0.8 s or more away: only the drain, which
    # tries at once, can store the outcome before the app shuts down.
    wait_until(lambda: service.counters["complete_failures"] >= 6)

    gap.relay.restore()
    service.server.stop()
    assert seen == [State.DONE]


def test_b40_lifespan_shutdown_is_bounded_and_releases_nothing(
    gap: Gap, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """With the store still gone, shutdown drains for `drain_timeout`, logs what is left, then
    lets the app shut down; the key is not released: it stays in flight for its lease (B16)."""
    service = serve("asgi", lifespan="on")
    service.middleware.flow.drain_timeout = 0.3
    events: list[str] = []
    service.app.on_shutdown = lambda: events.append("app shutdown")

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if _LEFT in record.getMessage():
                events.append("drained")

    handler = Recorder()
    logging.getLogger("retrysafe").addHandler(handler)
    try:
        service.app.after_effect = gap.relay.cut
        assert service.post().status_code == 201
        started = time.monotonic()
        service.server.stop()
        stopped = time.monotonic() - started
    finally:
        logging.getLogger("retrysafe").removeHandler(handler)
    assert events == ["drained", "app shutdown"]
    assert stopped < 5  # the task retrying the held outcome ends with the loop
    assert gap.state("k") is State.IN_FLIGHT
