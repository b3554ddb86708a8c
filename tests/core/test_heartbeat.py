"""Async heartbeats share one timer per loop and start renewing exactly when each falls due."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Coroutine
from typing import Any

from retrysafe._heartbeat import AsyncHeartbeat, _FirstRenewals


class Timer:
    """A timer of `SteppedLoop`: when it fires, what it calls, whether it was cancelled."""

    def __init__(self, when: float, callback: Any) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        """Never fire."""
        self.cancelled = True


class SteppedLoop:
    """The part of an event loop `_FirstRenewals` uses, with a clock the test moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Timer] = []
        self.started: list[str] = []

    def time(self) -> float:
        """The loop's clock."""
        return self.now

    def call_at(self, when: float, callback: Any) -> Timer:
        """Keep the timer; `advance` fires it."""
        timer = Timer(when, callback)
        self.timers.append(timer)
        return timer

    def create_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Note which heartbeat started renewing (by its renew's name); run nothing."""
        renewing = inspect.getcoroutinelocals(coroutine)["renew"]  # the heartbeat's `_renewing`
        self.started.append(renewing.__self__._renew.__name__)
        coroutine.close()

    def advance(self, to: float) -> None:
        """Move the clock to `to` and fire the timers due by then, as a loop would."""
        self.now = to
        for timer in [t for t in self.timers if not t.cancelled and t.when <= to]:
            self.timers.remove(timer)
            timer.callback()

    def armed(self) -> list[float]:
        """When the live timers fire."""
        return [t.when for t in self.timers if not t.cancelled]


def _beat(name: str, interval: float) -> AsyncHeartbeat:
    async def renew() -> bool:
        return True

    renew.__name__ = name
    return AsyncHeartbeat(renew, interval)


def test_b16_one_timer_starts_each_heartbeat_when_it_falls_due_in_any_start_order() -> None:
    """Heartbeats on one loop share one timer, armed for the earliest due; each starts renewing
    at its own due time, a later-started shorter one first, and a stopped one never does."""
    loop = SteppedLoop()
    renewals = _FirstRenewals(loop)  # type: ignore[arg-type]
    slow, stopped, quick = _beat("slow", 20.0), _beat("stopped", 1.0), _beat("quick", 5.0)
    renewals.add(slow, 20.0)
    assert loop.armed() == [20.0]
    loop.advance(0.5)
    renewals.add(stopped, 1.0)  # due at 1.5: the timer moves earlier
    renewals.add(quick, 5.0)  # due at 5.5: the timer stays
    assert loop.armed() == [1.5]
    renewals.discard(stopped)  # the operation ended before its first renewal
    loop.advance(1.5)  # nothing due: re-armed for the next one
    assert loop.started == []
    assert loop.armed() == [5.5]
    loop.advance(5.5)
    assert loop.started == ["quick"]
    assert loop.armed() == [20.0]
    loop.advance(20.0)
    assert loop.started == ["quick", "slow"]
    assert loop.armed() == []


def test_b16_heartbeats_started_on_a_real_loop_renew_and_stop() -> None:
    """On a real loop, a heartbeat renews once its interval passes and never after `stop`; one
    stopped before its interval never renews."""
    calls: list[str] = []

    async def main() -> None:
        renewed = asyncio.Event()

        async def renew() -> bool:
            calls.append("renewed")
            renewed.set()
            return True

        async def never() -> bool:
            calls.append("never")
            return True

        short_lived = AsyncHeartbeat(never, 0.01)
        await short_lived.start()
        await short_lived.stop()
        beat = AsyncHeartbeat(renew, 0.02)
        await beat.start()
        await asyncio.wait_for(renewed.wait(), 5)
        await beat.stop()
        count = len(calls)
        await asyncio.sleep(0.06)  # three intervals: a renewal would have landed
        assert len(calls) == count

    asyncio.run(main())
    assert "never" not in calls
    assert calls[0] == "renewed"


def test_b16_stop_ends_a_renewal_whose_store_call_swallowed_the_cancellation() -> None:
    """A store client may swallow the cancellation that `stop` sends during a renewal and
    return normally (redis-py 8 returns the reply about a fifth of the time, measured with
    `task.cancel()` on its GET and EVAL): the renewal still ends, so `stop` returns and no
    renewal runs after it. Before, it renewed for ever and `stop` never returned."""
    calls: list[str] = []

    async def main() -> None:
        in_call = asyncio.Event()

        async def renew() -> bool:
            calls.append("renewed")
            in_call.set()
            if len(calls) > 1:
                return True  # renewing after `stop`: the count says so, and a cancel ends it
            with contextlib.suppress(asyncio.CancelledError):  # the reply came back anyway
                await asyncio.sleep(30)
            return True

        beat = AsyncHeartbeat(renew, 0.01)
        await beat.start()
        await asyncio.wait_for(in_call.wait(), 5)
        stopping = asyncio.ensure_future(beat.stop())
        await asyncio.wait((stopping,), timeout=5)
        assert stopping.done()
        count = len(calls)
        await asyncio.sleep(0.05)  # five intervals: a renewal would have landed
        assert len(calls) == count == 1

    asyncio.run(main())
