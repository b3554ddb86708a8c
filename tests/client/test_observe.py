"""The client's attempts told to observers (`Observer.attempted`) on all three faces, against real
servers: the scripted app, the fault-injecting relay, and the real ASGI middleware."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from retrysafe.client import NotReplayableError, RetryPolicy
from retrysafe.demo._relay import FaultPlan, serve_relay
from retrysafe.observe import Attempt, Observer
from retrysafe.observe.prometheus import PrometheusObserver
from tests.client.conftest import HANG, Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face
from tests.client.test_end_to_end import CALLER, PaymentsApp, payment, serve

FAST = RetryPolicy(attempts=5, timeout=30.0, wait_initial=0.01, wait_max=0.05)


class Recorder(Observer):
    """Keeps every attempt it is told about."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []

    def attempted(self, attempt: Attempt) -> None:
        """Record `attempt`."""
        self.attempts.append(attempt)


class Broken(Observer):
    """An observer that fails on every attempt."""

    def attempted(self, attempt: Attempt) -> None:
        """Fail."""
        raise RuntimeError("observer down")


@pytest.fixture
def recorder() -> Recorder:
    """A fresh recording observer."""
    return Recorder()


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest, sleeps: Sleeps, recorder: Recorder) -> Face:
    """Each client face, its sleep injected, the recorder among its observers."""
    return Face(request.param, FAST, sleeps, observers=[recorder])


def _unquoted(key: str | None) -> str:
    assert key is not None
    return key.strip('"')


def test_each_attempt_is_told_with_its_number_status_and_delay(
    face: Face, scripted: Scripted, sleeps: Sleeps, recorder: Recorder
) -> None:
    """Three attempts are three reports: numbered, with their status, and the delay before the
    next one on all but the last."""
    url, script = scripted.script(Answer(503), Answer(429, {"Retry-After": "2"}), Answer(201))
    assert face.request("POST", url, content=b"x").status == 201
    key = _unquoted(script.seen[0].key)
    assert [(a.method, a.key, a.number) for a in recorder.attempts] == [
        ("POST", key, 1),
        ("POST", key, 2),
        ("POST", key, 3),
    ]
    assert [a.status for a in recorder.attempts] == [503, 429, 201]
    assert [a.error for a in recorder.attempts] == [None, None, None]
    assert [a.retry_in for a in recorder.attempts] == [sleeps.delays[0], 2.0, None]
    assert all(a.seconds >= 0.0 for a in recorder.attempts)


def test_the_last_attempt_of_exhausted_retries_has_no_retry_in(
    face: Face, scripted: Scripted, sleeps: Sleeps, recorder: Recorder
) -> None:
    """When attempts run out, the last one is told with `retry_in` None and its status."""
    face.policy = RetryPolicy(attempts=3, wait_initial=0.01)
    url, _ = scripted.script(Answer(503))
    assert face.request("POST", url, content=b"x").status == 503
    assert [(a.number, a.status) for a in recorder.attempts] == [(1, 503), (2, 503), (3, 503)]
    assert [a.retry_in for a in recorder.attempts] == [*sleeps.delays, None]


def test_an_attempt_stopped_by_the_deadline_is_the_last(
    face: Face, scripted: Scripted, sleeps: Sleeps, recorder: Recorder
) -> None:
    """A wait that would end past the total-time bound is not started: the attempt is the last."""
    face.policy = RetryPolicy(timeout=5.0)
    url, _ = scripted.script(Answer(503, {"Retry-After": "10"}), Answer(201))
    assert face.request("POST", url, content=b"x").status == 503
    assert sleeps.delays == []
    (attempt,) = recorder.attempts
    assert (attempt.number, attempt.status, attempt.retry_in) == (1, 503, None)


def test_a_final_answer_is_one_attempt(face: Face, scripted: Scripted, recorder: Recorder) -> None:
    """A 422 is not retried: one attempt, told as the last."""
    url, _ = scripted.script(Answer(422), Answer(201))
    assert face.request("POST", url, content=b"x").status == 422
    (attempt,) = recorder.attempts
    assert (attempt.number, attempt.status, attempt.error, attempt.retry_in) == (1, 422, None, None)


@pytest.mark.parametrize(("method", "attempts"), [("GET", 2), ("LOCK", 1)])
def test_unkeyed_methods_are_told_with_an_empty_key(
    face: Face, scripted: Scripted, recorder: Recorder, method: str, attempts: int
) -> None:
    """A GET (retried without a key) and a LOCK (sent once) are told too, with key ""."""
    url, script = scripted.script(Answer(503), Answer(200))
    face.request(method, url)
    assert len(script.seen) == attempts
    assert [(a.method, a.key, a.number) for a in recorder.attempts] == [
        (method, "", n) for n in range(1, attempts + 1)
    ]
    assert recorder.attempts[-1].retry_in is None


def test_an_attempt_without_a_response_is_told_with_its_error(
    face: Face, scripted: Scripted, recorder: Recorder
) -> None:
    """A timed-out attempt is told with its error's class name, no status, and how long it took
    (real clock and sleeps)."""
    face.sleeps = None
    url, _ = scripted.script(Answer(HANG), Answer(201))
    assert face.request("POST", url, content=b"x", timeout=0.3).status == 201
    # On a loaded machine the answered attempt may time out too, and be retried: each such
    # attempt is told the same way, and the last one is the answer.
    *timed_out, last = recorder.attempts
    first = timed_out[0]
    assert (first.number, first.status, first.error) == (1, None, "ReadTimeout")
    assert first.seconds >= 0.25
    assert first.retry_in is not None
    assert 0.0 <= first.retry_in <= FAST.wait_initial
    assert all((a.status, a.error) == (None, "ReadTimeout") for a in timed_out)
    answered = (last.number, last.status, last.error, last.retry_in)
    assert answered == (len(timed_out) + 1, 201, None, None)


def test_lost_responses_are_attempts_with_errors(
    face: Face, scripted: Scripted, recorder: Recorder
) -> None:
    """Through the relay, every lost response is an attempt told with an error and a delay."""
    url, script = scripted.script(Answer(201))
    base, path = url.split("/s/")
    with serve_relay(base, FaultPlan(loss=0.6, seed=3)) as relay:
        assert face.request("POST", f"{relay.url}/s/{path}", content=b"pay").status == 201
    lost = relay.counters.lost
    assert lost >= 1
    assert len(recorder.attempts) == len(script.seen) == lost + 1
    failed, last = recorder.attempts[:-1], recorder.attempts[-1]
    assert all(a.status is None and a.error and a.retry_in is not None for a in failed)
    assert (last.number, last.status, last.error, last.retry_in) == (lost + 1, 201, None, None)


def test_a_stream_that_cannot_be_replayed_is_told_with_the_wire_error(
    face: Face, scripted: Scripted, recorder: Recorder
) -> None:
    """A lost response to a generator body is one last attempt, told with what failed on the
    wire rather than NotReplayableError."""
    url, _ = scripted.script(Answer(201))
    base, path = url.split("/s/")
    with (
        serve_relay(base, FaultPlan(loss=1.0)) as relay,
        pytest.raises(NotReplayableError) as caught,
    ):
        face.request("POST", f"{relay.url}/s/{path}", chunks=[b"a", b"b"])
    (attempt,) = recorder.attempts
    assert attempt.error == type(caught.value.__cause__).__name__
    assert (attempt.status, attempt.retry_in) == (None, None)


def test_a_failing_observer_is_logged_and_ignored(
    face: Face, scripted: Scripted, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """An observer that raises does not fail the request nor silence the others; it is logged."""
    face.observers = [Broken(), recorder]
    url, _ = scripted.script(Answer(503), Answer(201))
    with caplog.at_level(logging.ERROR, logger="retrysafe"):
        assert face.request("POST", url, content=b"x").status == 201
    assert [a.number for a in recorder.attempts] == [1, 2]
    failures = [r for r in caplog.records if "failed in attempted" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.name == "retrysafe" and r.exc_info for r in failures)


def test_prometheus_counts_attempts_by_status_class_and_times_retry_delays(
    face: Face, scripted: Scripted, sleeps: Sleeps
) -> None:
    """On a fresh registry: attempts by method and status class, one delay per retry."""
    registry = CollectorRegistry()
    face.observers = [PrometheusObserver(registry)]
    url, _ = scripted.script(Answer(503), Answer(502), Answer(201))
    assert face.request("POST", url, content=b"x").status == 201
    url, _ = scripted.script(Answer(503), Answer(200))
    assert face.request("GET", url).status == 200

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    attempts = "retrysafe_client_attempts_total"
    assert sample(attempts, method="POST", status="5xx") == 2
    assert sample(attempts, method="POST", status="2xx") == 1
    assert sample(attempts, method="GET", status="5xx") == 1
    assert sample(attempts, method="GET", status="2xx") == 1
    assert sample("retrysafe_client_retry_delay_seconds_count") == 3
    assert sample("retrysafe_client_retry_delay_seconds_sum") == pytest.approx(sum(sleeps.delays))


def test_prometheus_counts_lost_responses_as_errors_and_the_server_replays(
    face: Face, recorder: Recorder
) -> None:
    """Client and middleware on one registry, through lost responses: the client's attempts
    (errors, then 2xx) match the server's decisions (one execution, a replay per loss)."""
    registry = CollectorRegistry()
    prometheus = PrometheusObserver(registry)
    face.observers = [prometheus, recorder]
    with (
        serve(PaymentsApp(), observers=[prometheus]) as service,
        serve_relay(service.url, FaultPlan(loss=0.5, seed=11)) as relay,
    ):
        url = f"{relay.url}/payments"
        for i in range(5):
            assert face.request("POST", url, headers=CALLER, content=payment(i)).status == 201
    lost = relay.counters.lost
    assert lost >= 1
    assert service.app.executions == 5

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert sample("retrysafe_client_attempts_total", method="POST", status="error") == lost
    assert sample("retrysafe_client_attempts_total", method="POST", status="2xx") == 5
    assert sample("retrysafe_client_retry_delay_seconds_count") == lost
    assert sample("retrysafe_requests_total", face="asgi", decision="execute") == 5
    assert sample("retrysafe_requests_total", face="asgi", decision="replay") == lost
    assert len(recorder.attempts) == relay.counters.received == 5 + lost
