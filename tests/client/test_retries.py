"""Keys and retries (SPEC B32-B33) on all three faces, against a scripted server on uvicorn."""

from __future__ import annotations

import uuid

import pytest

from retrysafe.client import NotReplayableError, RetryEvent, RetryPolicy
from retrysafe.demo._relay import FaultPlan, serve_relay
from tests.client.conftest import HANG, Answer, Scripted, Sleeps
from tests.client.faces import FACES, Face

FAST = RetryPolicy(attempts=5, timeout=30.0, wait_initial=0.01, wait_max=0.05)


@pytest.fixture(params=FACES)
def face(request: pytest.FixtureRequest, sleeps: Sleeps) -> Face:
    """Each client face, with an injected sleep that never waits."""
    return Face(request.param, FAST, sleeps)


def test_b32_post_gets_one_uuid4_key_reused_on_every_retry(face: Face, scripted: Scripted) -> None:
    """A POST gets a quoted UUIDv4 key, and every retry sends the same key and the same body."""
    url, script = scripted.script(Answer(503), Answer(502), Answer(201, body=b"made"))
    outcome = face.request("POST", url, content=b'{"amount": 5}')
    assert (outcome.status, outcome.body) == (201, b"made")
    keys = {seen.key for seen in script.seen}
    assert len(script.seen) == 3
    assert len(keys) == 1
    (key,) = keys
    assert key is not None
    assert key.startswith('"')
    assert key.endswith('"')
    assert uuid.UUID(key.strip('"')).version == 4
    assert {seen.body for seen in script.seen} == {b'{"amount": 5}'}


def test_b32_each_logical_request_gets_its_own_key(face: Face, scripted: Scripted) -> None:
    """Two logical POSTs carry two different keys."""
    url, script = scripted.script(Answer(201))
    face.request("POST", url, content=b"a")
    face.request("POST", url, content=b"a")
    assert len({seen.key for seen in script.seen}) == 2


def test_b32_patch_is_covered_too(face: Face, scripted: Scripted) -> None:
    """PATCH is a covered method by default: it gets a key and is retried."""
    url, script = scripted.script(Answer(503), Answer(200))
    assert face.request("PATCH", url, content=b"x").status == 200
    assert len(script.seen) == 2
    assert script.seen[0].key is not None
    assert script.seen[0].key == script.seen[1].key


def test_b32_callers_key_wins(face: Face, scripted: Scripted) -> None:
    """A key the caller set is sent unchanged on every attempt, and no other key is added."""
    url, script = scripted.script(Answer(503), Answer(201))
    face.request("POST", url, headers={"Idempotency-Key": "order-42"}, content=b"x")
    assert [seen.key for seen in script.seen] == ["order-42", "order-42"]


def test_b33_in_flight_409_waits_for_retry_after(
    face: Face, scripted: Scripted, sleeps: Sleeps
) -> None:
    """A 409 with Retry-After is retried after exactly the stated delay, and hooks see why."""
    events: list[RetryEvent] = []
    face.hooks = [events.append]
    url, script = scripted.script(
        Answer(409, {"Retry-After": "3"}), Answer(201, {"Idempotent-Replayed": "true"})
    )
    outcome = face.request("POST", url, content=b"x")
    assert outcome.status == 201
    assert outcome.replayed is True
    assert sleeps.delays == [3.0]
    assert len(script.seen) == 2
    (event,) = events
    assert (event.attempt, event.delay, event.status, event.cause) == (1, 3.0, 409, "HTTP 409")
    assert event.idempotency_key == script.seen[0].key.strip('"')  # type: ignore[union-attr]


def test_b33_retry_after_is_capped(face: Face, scripted: Scripted, sleeps: Sleeps) -> None:
    """A Retry-After longer than the cap is waited only up to the cap."""
    face.policy = RetryPolicy(retry_after_max=2.0, wait_initial=0.01)
    url, _ = scripted.script(Answer(429, {"Retry-After": "120"}), Answer(201))
    assert face.request("POST", url, content=b"x").status == 201
    assert sleeps.delays == [2.0]


@pytest.mark.parametrize("status", [400, 422])
def test_b33_idempotency_errors_are_not_retried(
    face: Face, scripted: Scripted, sleeps: Sleeps, status: int
) -> None:
    """400 and 422 answers are final: one attempt, no wait."""
    url, script = scripted.script(Answer(status, {"Retry-After": "1"}), Answer(201))
    assert face.request("POST", url, content=b"x").status == status
    assert len(script.seen) == 1
    assert sleeps.delays == []


def test_b33_backoff_is_full_jitter_under_the_ceiling(
    face: Face, scripted: Scripted, sleeps: Sleeps
) -> None:
    """Without Retry-After each wait lies in [0, min(wait_max, wait_initial * 2**n)]."""
    face.policy = RetryPolicy(attempts=6, wait_initial=1.0, wait_max=4.0)
    url, script = scripted.script(Answer(503))
    assert face.request("POST", url, content=b"x").status == 503
    assert len(script.seen) == 6
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(sleeps.delays) == 5
    assert all(0.0 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))


def test_b33_total_time_bound_holds(face: Face, scripted: Scripted, sleeps: Sleeps) -> None:
    """No wait starts that would end past the total-time bound; the last answer is returned."""
    face.policy = RetryPolicy(attempts=100, timeout=2.5)
    url, script = scripted.script(Answer(503, {"Retry-After": "1"}))
    assert face.request("POST", url, content=b"x").status == 503
    assert sleeps.delays == [1.0, 1.0]
    assert len(script.seen) == 3


def test_b33_total_time_bound_cuts_a_hanging_attempt(face: Face, scripted: Scripted) -> None:
    """An attempt that hangs is cut at the total-time bound (real clock), not at its own timeout."""
    face.sleeps = None
    face.policy = RetryPolicy(attempts=3, timeout=0.5)
    url, script = scripted.script(Answer(HANG))
    with pytest.raises(Exception) as caught:  # noqa: PT011 -- each face has its timeout type
        face.request("POST", url, content=b"x", timeout=30.0)
    assert "timeout" in type(caught.value).__name__.lower()
    assert len(script.seen) == 1


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])
def test_b33_safe_and_idempotent_methods_retry_without_a_key(
    face: Face, scripted: Scripted, method: str
) -> None:
    """RFC 9110 safe and idempotent methods are retried as they are, without a key."""
    url, script = scripted.script(Answer(503), Answer(200))
    assert face.request(method, url).status == 200
    assert [seen.key for seen in script.seen] == [None, None]


def test_b33_a_409_on_put_is_an_answer(face: Face, scripted: Scripted) -> None:
    """409 means 'in flight' only for keyed requests; a PUT conflict is not retried."""
    url, script = scripted.script(Answer(409), Answer(200))
    assert face.request("PUT", url, content=b"x").status == 409
    assert len(script.seen) == 1


def test_b33_other_methods_are_sent_once(face: Face, scripted: Scripted) -> None:
    """A method that is neither covered nor idempotent (here LOCK) is never retried."""
    url, script = scripted.script(Answer(503), Answer(200))
    assert face.request("LOCK", url).status == 503
    assert len(script.seen) == 1
    assert script.seen[0].key is None


def test_b33_a_replayed_answer_is_not_retried(face: Face, scripted: Scripted) -> None:
    """A stored 503 replayed by the server is the outcome; retrying it would replay it again."""
    url, script = scripted.script(Answer(503, {"Idempotent-Replayed": "true"}), Answer(201))
    outcome = face.request("POST", url, content=b"x")
    assert (outcome.status, outcome.replayed) == (503, True)
    assert len(script.seen) == 1


def test_b33_fresh_execution_is_not_a_replay(face: Face, scripted: Scripted) -> None:
    """A response without the replay header is reported as a fresh execution."""
    url, _ = scripted.script(Answer(201))
    assert face.request("POST", url, content=b"x").replayed is False


def test_b33_lost_responses_are_retried_with_the_same_key(face: Face, scripted: Scripted) -> None:
    """Responses lost after the server saw the request are retried with the same key and body."""
    url, script = scripted.script(Answer(201))
    base, path = url.split("/s/")
    with serve_relay(base, FaultPlan(loss=0.6, seed=3)) as relay:
        outcome = face.request("POST", f"{relay.url}/s/{path}", content=b"pay")
    assert outcome.status == 201
    assert relay.counters.lost >= 1
    assert len(script.seen) == relay.counters.lost + 1
    assert len({seen.key for seen in script.seen}) == 1
    assert {seen.body for seen in script.seen} == {b"pay"}


def test_b33_a_stream_cut_at_the_bound_ends_with_the_timeout_error(
    face: Face, scripted: Scripted
) -> None:
    """A request with a generator body cut at the total-time bound raises the face's timeout
    error naming the bound, as a bytes body does: it is never retried, so its stream plays no
    part (it was a NotReplayableError, which a timeout handler misses)."""
    face.sleeps = None
    face.policy = RetryPolicy(attempts=3, timeout=0.5)
    url, script = scripted.script(Answer(HANG))
    with pytest.raises(Exception) as caught:  # noqa: PT011 -- each face has its timeout type
        face.request("POST", url, chunks=[b"a", b"b"], timeout=30.0)
    assert not isinstance(caught.value, NotReplayableError)
    assert "timeout" in type(caught.value).__name__.lower()
    assert "RetryPolicy.timeout" in str(caught.value)
    assert len(script.seen) == 1


def test_b32_stream_that_cannot_be_replayed_is_not_retried(face: Face, scripted: Scripted) -> None:
    """A lost response to a generator body raises NotReplayableError after one attempt."""
    url, script = scripted.script(Answer(201))
    base, path = url.split("/s/")
    with (
        serve_relay(base, FaultPlan(loss=1.0)) as relay,
        pytest.raises(NotReplayableError, match="cannot be sent again") as caught,
    ):
        face.request("POST", f"{relay.url}/s/{path}", chunks=[b"a", b"b"])
    assert caught.value.__cause__ is not None
    assert len(script.seen) == 1
    assert script.seen[0].body == b"ab"


def test_b32_stream_with_a_retryable_status_is_returned(face: Face, scripted: Scripted) -> None:
    """A 503 to a generator body is returned as it is, not retried with a spent body."""
    url, script = scripted.script(Answer(503), Answer(201))
    assert face.request("POST", url, chunks=[b"a", b"b"]).status == 503
    assert len(script.seen) == 1
