"""The fault-injecting relay: per-request losses after the upstream applied, delays, counters."""

from __future__ import annotations

import httpx
import pytest

from retrysafe import ConfigurationError
from retrysafe.demo._relay import FaultPlan, serve_relay
from tests.client.conftest import Answer, Scripted


def _send_all(url: str, count: int, *, timeout: float = 5.0) -> list[int | str]:
    """POST `count` times over one keep-alive client; return statuses or error names."""
    results: list[int | str] = []
    with httpx.Client(timeout=timeout) as client:
        for i in range(count):
            try:
                results.append(client.post(url, content=b"%d" % i).status_code)
            except httpx.TransportError as error:
                results.append(type(error).__name__)
    return results


def _split(url: str) -> tuple[str, str]:
    base, name = url.split("/s/")
    return base, f"/s/{name}"


def test_relay_forwards_everything_without_faults(scripted: Scripted) -> None:
    """With no faults the relay is transparent: method, body, headers and status pass through."""
    url, script = scripted.script(Answer(201, {"x-answer": "yes"}, b"created"))
    base, path = _split(url)
    with serve_relay(base) as relay:
        response = httpx.post(relay.url + path + "?q=1", content=b"hello", headers={"x-in": "1"})
    assert (response.status_code, response.content) == (201, b"created")
    assert response.headers["x-answer"] == "yes"
    assert script.seen[0].body == b"hello"
    assert script.seen[0].headers["x-in"] == "1"
    assert relay.counters.snapshot() == {
        "received": 1,
        "forwarded": 1,
        "delivered": 1,
        "lost": 0,
        "delayed": 0,
        "abandoned": 0,
        "upstream_errors": 0,
    }


def test_relay_loses_responses_after_the_upstream_applied_them(scripted: Scripted) -> None:
    """A lost response was still applied upstream; the client sees a disconnect, not an answer."""
    url, script = scripted.script(Answer(201))
    base, path = _split(url)
    with serve_relay(base, FaultPlan(loss=0.5, seed=11)) as relay:
        results = _send_all(relay.url + path, 40)
    lost = [r for r in results if r != 201]
    assert set(lost) == {"RemoteProtocolError"}
    assert len(lost) == relay.counters.lost > 0
    assert len(script.seen) == 40 == relay.counters.forwarded
    assert relay.counters.delivered == 40 - relay.counters.lost


def test_relay_with_a_seed_is_reproducible(scripted: Scripted) -> None:
    """Two runs with the same seed lose the same requests."""
    url, _ = scripted.script(Answer(200))
    base, path = _split(url)
    runs = []
    for _ in range(2):
        with serve_relay(base, FaultPlan(loss=0.3, delay=0.2, delay_seconds=0.01, seed=5)) as relay:
            runs.append((_send_all(relay.url + path, 30), relay.counters.snapshot()))
    assert runs[0] == runs[1]
    assert runs[0][1]["lost"] > 0
    assert runs[0][1]["delayed"] > 0


def test_relay_lost_as_timeout_holds_until_the_client_gives_up(scripted: Scripted) -> None:
    """In timeout mode a lost response never comes: the client's read timeout fires."""
    url, script = scripted.script(Answer(201))
    base, path = _split(url)
    with serve_relay(base, FaultPlan(loss=1.0, lost_as="timeout")) as relay:
        results = _send_all(relay.url + path, 2, timeout=0.2)
    assert results == ["ReadTimeout", "ReadTimeout"]
    assert len(script.seen) == 2
    assert relay.counters.lost == 2


def test_relay_delays_responses(scripted: Scripted) -> None:
    """Delayed responses are delivered and counted."""
    url, _ = scripted.script(Answer(200))
    base, path = _split(url)
    with serve_relay(base, FaultPlan(delay=1.0, delay_seconds=0.01, seed=1)) as relay:
        assert _send_all(relay.url + path, 3) == [200, 200, 200]
    assert relay.counters.delayed == relay.counters.delivered == 3


def test_relay_counts_delayed_answers_the_client_gave_up_on(scripted: Scripted) -> None:
    """A delay longer than the client's timeout: the request was applied, the answer abandoned."""
    url, script = scripted.script(Answer(200))
    base, path = _split(url)
    plan = FaultPlan(delay=1.0, delay_min_seconds=0.5, delay_seconds=0.6)
    with serve_relay(base, plan) as relay:
        assert _send_all(relay.url + path, 2, timeout=0.1) == ["ReadTimeout", "ReadTimeout"]
    assert len(script.seen) == 2
    assert relay.counters.abandoned == relay.counters.delayed == 2
    assert relay.counters.delivered == 0


def test_relay_answers_502_when_the_upstream_is_down() -> None:
    """An upstream that does not answer gives 502 and is counted, not forwarded."""
    with serve_relay("http://127.0.0.1:9", FaultPlan(upstream_timeout=2.0)) as relay:
        assert httpx.get(relay.url + "/x").status_code == 502
    assert relay.counters.upstream_errors == 1
    assert relay.counters.forwarded == 0


@pytest.mark.parametrize(
    "options",
    [
        {"loss": 1.5},
        {"delay": -0.1},
        {"lost_as": "vanish"},
        {"delay_seconds": -1.0},
        {"delay_min_seconds": 0.5, "delay_seconds": 0.1},
    ],
)
def test_fault_plan_refuses_invalid_values(options: dict[str, object]) -> None:
    """Probabilities outside [0, 1], unknown loss modes and negative durations are refused."""
    with pytest.raises(ConfigurationError):
        FaultPlan(**options)  # type: ignore[arg-type]
