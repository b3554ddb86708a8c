"""B19 when the store loses a record while its operation runs (Redis restarted without
persistence, a failover to a replica that had not seen it): the outcome, which this process
knows, is stored under a new claim, so a retry replays it instead of running the effect again.
A record someone else claimed meanwhile is theirs (B17): the completion is fenced.

Each store is reached through the relay of `tests/flow/conftest.py`; the record is deleted on
the real server from inside the operation, right after its effect."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from retrysafe import FencedError, State, open_async_store, open_store
from retrysafe._concurrency import monotonic
from retrysafe._decorator import idempotent
from retrysafe._flow import SyncFlow
from retrysafe._flow.holding import Held, Step
from retrysafe._record import Identity
from tests.flow.conftest import Gap, Served, wait_until

Serve = Callable[..., Served]


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_an_outcome_whose_record_was_lost_is_stored_again(
    face: str, gap: Gap, serve: Serve
) -> None:
    """The record is gone when the outcome is stored: it is claimed again and stored, counted
    as `restored`, not as a fencing; a retry replays it, and the effect ran once."""
    service = serve(face)
    service.app.after_effect = lambda: gap.lose("k")

    first = service.post()
    assert first.status_code == 201
    assert gap.state("k") is State.DONE
    assert service.counters["restored"] == 1
    assert service.counters["fenced"] == 0

    again = service.post()
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert service.app.runs == 1


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_a_held_outcome_whose_record_was_lost_is_stored_again(
    face: str, gap: Gap, serve: Serve
) -> None:
    """The store loses the record and becomes unreachable right after the effect: the outcome
    is held; once the store is back, its completion finds the record gone, claims it again and
    stores it. A retry then replays it from the store."""
    service = serve(face)

    def lose_then_cut() -> None:
        gap.lose("k")
        gap.relay.cut()

    service.app.after_effect = lose_then_cut
    first = service.post()
    assert first.status_code == 201
    assert service.counters["held"] == 1

    gap.relay.restore()
    gap.wait_for_done("k")
    wait_until(lambda: len(service.middleware.flow.holdings) == 0)
    assert service.counters["completed_late"] == 1
    assert service.counters["restored"] == 1

    again = service.post()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert service.app.runs == 1


def test_b19_a_decorated_call_whose_record_was_lost_returns_and_replays(gap: Gap) -> None:
    """The decorator, which raises a fencing to its caller (B17), returns the result: the
    record was lost, not taken over. A repeat replays it."""
    store = open_store(gap.url)
    runs: list[str] = []

    @idempotent(store, key="key")
    def charge(key: str) -> dict[str, int]:
        runs.append(key)
        gap.lose(key)
        return {"charged": len(runs)}

    try:
        assert charge("k") == {"charged": 1}
        assert gap.state("k") is State.DONE
        assert charge("k") == {"charged": 1}
        assert runs == ["k"]
    finally:
        store.close()


@pytest.mark.anyio
async def test_b19_an_async_call_whose_record_was_lost_returns_and_replays(gap: Gap) -> None:
    """The async twin of the decorated call above."""
    store = open_async_store(gap.url)
    runs: list[str] = []

    @idempotent(store, key="key")
    async def charge(key: str) -> dict[str, int]:
        runs.append(key)
        gap.lose(key)
        return {"charged": len(runs)}

    try:
        assert await charge("k") == {"charged": 1}
        assert gap.state("k") is State.DONE
        assert await charge("k") == {"charged": 1}
        assert runs == ["k"]
    finally:
        await store.aclose()


def test_b17_a_lost_record_claimed_by_another_is_not_overwritten(gap: Gap) -> None:
    """The record was lost and another worker claimed the key before the outcome was stored:
    the key is theirs. The call learns it was fenced, and their claim stands."""
    store = open_store(gap.url)
    other = open_store(gap.direct_url)

    @idempotent(store, key="key")
    def charge(key: str) -> str:
        lost = gap.lose(key)
        claim = other.claim(lost.identity, "another request", lease=30, retention=60)
        assert claim.acquired
        return "charged"

    try:
        with pytest.raises(FencedError):
            charge("k")
        (record,) = gap.records("k")
        assert record.state is State.IN_FLIGHT
        assert record.fingerprint == "another request"
    finally:
        store.close()
        other.close()


def test_b19_a_held_outcome_whose_renewal_finds_its_record_lost_is_stored(tmp_path: Path) -> None:
    """A held outcome's lease renewal, due before its next completion, finds the record gone:
    the outcome is stored under a new claim instead of being dropped as taken over."""
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    flow = SyncFlow(store)
    identity = Identity("tests.flow", "", "k")
    try:
        claim = store.claim(identity, "fp", lease=30, retention=3600)
        assert claim.acquired
        held = Held.start(
            identity, claim.token, b"the outcome", lease=30, retention=3600,
            claimed=claim.record, now=0.0, wall=store.clock.now(),
        )  # fmt: skip
        held.complete_at, held.renew_at = monotonic() + 3600, 0.0  # the renewal is due first
        assert held.next_step(monotonic(), store.clock.now()) is Step.RENEW
        flow.hold(held)
        assert store.delete(identity)
        assert flow._keep(held) is None  # the due steps, as the holder thread runs them
        assert len(flow.holdings) == 0
        stored = store.get(identity)
        assert stored is not None
        assert (stored.state, stored.outcome) == (State.DONE, b"the outcome")
        assert flow.counters.restored == 1
    finally:
        store.close()


@pytest.mark.parametrize("face", ["asgi", "wsgi"])
def test_b19_a_completion_whose_reply_was_lost_is_stored_not_fenced(
    face: str, gap: Gap, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """The store applies the completion but its reply is lost: the outcome is held, and its
    next completion finds the record done under its own token. That is its own outcome,
    stored: counted as stored late, not as a fencing, and nothing is logged as taken over."""
    service = serve(face)
    service.app.after_effect = gap.relay.drop_replies
    first = service.post()
    assert first.status_code == 201
    assert service.counters["held"] == 1
    gap.wait_for_done("k")  # the server applied it; the reply never came back
    gap.relay.keep_replies()
    wait_until(lambda: len(service.middleware.flow.holdings) == 0)
    assert service.counters["completed_late"] == 1
    assert service.counters["fenced"] == 0
    assert "taken over" not in caplog.text
    again = service.post()
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert service.app.runs == 1
