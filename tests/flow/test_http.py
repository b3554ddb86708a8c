"""B19 through real servers: an outcome the store did not take is held, replayed and stored late.

The store is cut from inside the handler, right after its effect, so the completion fails; the
relay is restored afterwards. Uvicorn serves the ASGI middleware, wsgiref the WSGI one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from retrysafe import State
from tests.flow.conftest import Gap, Served, wait_until

Serve = Callable[..., Served]


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_an_outcome_stored_late_runs_the_handler_once(
    face: str, gap: Gap, serve: Serve
) -> None:
    """The client gets its 201 though the store is gone; a retry in the gap gets the held
    outcome; once the store is back the outcome lands, and a retry replays it from the store."""
    service = serve(face)
    service.app.after_effect = gap.relay.cut

    first = service.post()
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert gap.relay.is_cut
    assert service.counters["complete_failures"] >= 1
    assert service.counters["held"] == 1

    during = service.post()  # the store is unreachable: only the held outcome can answer
    assert during.status_code == 201
    assert during.headers["idempotent-replayed"] == "true"
    assert during.content == first.content
    assert gap.state("k") is State.IN_FLIGHT  # not stored yet, and never "not found"

    gap.relay.restore()
    gap.wait_for_done("k")
    wait_until(lambda: len(service.middleware.flow.holdings) == 0)
    assert service.counters["completed_late"] == 1

    after = service.post()
    assert after.status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == first.content
    assert service.app.runs == 1
    assert service.counters["executions"] == 1
    assert service.counters["replays"] == 2


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_a_store_that_stalls_after_the_effect_holds_the_outcome(
    face: str, gap: Gap, serve: Serve
) -> None:
    """A store that stops answering (its connections open, nothing coming back) right after
    the effect: the completion fails within the store's read timeout rather than hanging the
    request, the client gets its 201, a retry gets the held outcome, and once the store answers
    again the outcome lands. The handler ran once."""
    service = serve(face)
    service.app.after_effect = gap.relay.stall

    first = service.post()
    assert first.status_code == 201
    assert service.counters["held"] == 1

    during = service.post()
    assert during.status_code == 201
    assert during.headers["idempotent-replayed"] == "true"
    assert during.content == first.content

    gap.relay.resume()
    gap.wait_for_done("k")
    after = service.post()
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == first.content
    assert service.app.runs == 1


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b20_a_claim_the_store_never_answers_is_refused_and_the_retry_runs_once(
    face: str, gap: Gap, serve: Serve
) -> None:
    """A store that stops answering before the claim's reply: the request is refused with the
    503 problem within the store's read timeout, the handler not run, rather than held for
    ever. The claim's bytes were on their way, so it may still land once the store answers
    again: a retry is then refused as in flight until that claim's lease ends. Whichever it
    was, the handler runs once, and the next retry replays."""
    service = serve(face, lease=1, wait=0)
    gap.relay.stall()
    refused = service.post()
    assert refused.status_code == 503
    assert refused.headers["content-type"] == "application/problem+json"
    assert int(refused.headers["retry-after"]) >= 1
    assert service.app.runs == 0

    gap.relay.resume()
    statuses: list[int] = []

    def runs_now() -> bool:
        statuses.append(service.post().status_code)
        if statuses[-1] != 201:
            time.sleep(0.1)
        return statuses[-1] == 201

    wait_until(runs_now)
    assert set(statuses) <= {201, 409, 503}
    replayed = service.post()
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert service.app.runs == 1


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_a_gap_longer_than_the_lease_still_replays(face: str, gap: Gap, serve: Serve) -> None:
    """With a 1 s lease and a longer gap, a retry after the lease would have ended gets the held
    outcome, and the late completion still lands: the handler ran once."""
    service = serve(face, lease=1)
    service.app.after_effect = gap.relay.cut
    assert service.post().status_code == 201
    # Three failed renewals of the held outcome, a third of the lease apart: the lease is over.
    wait_until(lambda: service.counters["renew_failures"] >= 3)
    (record,) = gap.records("k")
    assert record.state is State.IN_FLIGHT
    assert record.lease_expires_at <= gap.now()

    late = service.post()
    assert late.status_code == 201
    assert late.headers["idempotent-replayed"] == "true"

    gap.relay.restore()
    gap.wait_for_done("k")
    after = service.post()
    assert after.headers["idempotent-replayed"] == "true"
    assert after.content == late.content
    assert service.app.runs == 1


def test_b19_a_different_request_with_a_held_key_is_a_mismatch(gap: Gap, serve: Serve) -> None:
    """A held outcome answers only the same request: another body with its key gets 422."""
    service = serve("asgi")
    service.app.after_effect = gap.relay.cut
    assert service.post().status_code == 201
    other = service.client.post("/charge", headers={"Idempotency-Key": "k"}, content=b"[1]")
    assert other.status_code == 422
    assert service.app.runs == 1
    gap.relay.restore()
    gap.wait_for_done("k")
