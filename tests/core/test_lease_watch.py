"""B16: an async heartbeat tells when its lease went unrenewed longer than itself (the event
loop held up), at the renewal that comes too late and at the end of the operation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from retrysafe._heartbeat import AsyncHeartbeat


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.at = 100.0

    def now(self) -> float:
        return self.at


class Lapses(list[float]):
    """What a heartbeat told its watcher."""

    def lapsed(self, unrenewed: float) -> None:
        self.append(unrenewed)


def run_beat(
    interval: float,
    renew: Callable[[], Awaitable[bool]],
    steps: Callable[[AsyncHeartbeat], Awaitable[None]],
    clock: Clock,
) -> list[float]:
    """Run a heartbeat through `steps` on a fresh loop; return the lapses it told."""
    lapses = Lapses()

    async def main() -> None:
        beat = AsyncHeartbeat(renew, interval, lapses, clock=clock)
        await beat.start()
        await steps(beat)

    asyncio.run(main())
    return lapses


async def renewed() -> bool:
    return True


def test_b16_an_operation_that_ends_within_its_lease_is_never_reported() -> None:
    """An end exactly a lease (3 intervals) after the start is not past it: nothing is told."""
    clock = Clock()

    async def steps(beat: AsyncHeartbeat) -> None:
        clock.at += 30.0
        await beat.stop()

    assert run_beat(10.0, renewed, steps, clock) == []


def test_b16_an_async_heartbeat_reports_a_lapse_when_it_stops_without_a_renewal() -> None:
    """An operation that held its loop past the lease (the clock moved while no renewal ran)
    is reported as it ends, with how long the lease went unrenewed; no renewal ever ran."""
    clock, renewals = Clock(), list[str]()

    async def renew() -> bool:
        renewals.append("renewed")
        return True

    async def steps(beat: AsyncHeartbeat) -> None:
        clock.at += 45.0  # what a loop blocked for 45 s would see as the operation ends
        await beat.stop()

    assert run_beat(10.0, renew, steps, clock) == [45.0]
    assert renewals == []


def test_b16_an_async_heartbeat_reports_a_late_renewal_before_renewing() -> None:
    """The first renewal, run after the lease went unrenewed for 40 s, is reported before its
    store call; the lease is then counted from that renewal, so the end right after it reports
    nothing more."""
    clock, lapses, told_before = Clock(), Lapses(), list[int]()

    async def main() -> None:
        renewed = asyncio.Event()

        async def renew() -> bool:
            told_before.append(len(lapses))
            renewed.set()
            return True

        beat = AsyncHeartbeat(renew, 0.01, lapses, clock=clock)
        await beat.start()
        clock.at += 40.0  # 40 s pass before the first renewal (due after 0.01 s) runs
        await asyncio.wait_for(renewed.wait(), 5)
        await beat.stop()

    asyncio.run(main())
    assert told_before[0] == 1
    assert lapses == [40.0]


def test_b16_renewals_in_time_report_nothing() -> None:
    """Renewals that keep coming within the lease report nothing, however long the operation
    runs in all (here over three times the lease)."""
    clock, lapses = Clock(), Lapses()

    async def main() -> None:
        renewals = 0
        enough = asyncio.Event()

        async def renew() -> bool:
            nonlocal renewals
            renewals += 1
            clock.at += 0.02  # two thirds of the lease (three intervals) since the last one
            if renewals == 5:
                enough.set()
            return True

        beat = AsyncHeartbeat(renew, 0.01, lapses, clock=clock)
        await beat.start()
        await asyncio.wait_for(enough.wait(), 5)
        await beat.stop()

    asyncio.run(main())
    assert lapses == []


def test_b16_an_interrupted_operation_past_its_lease_is_reported_once() -> None:
    """`abandon` (an interrupted operation) tells as `stop` does."""
    clock = Clock()

    async def steps(beat: AsyncHeartbeat) -> None:
        clock.at += 31.0
        beat.abandon()

    assert run_beat(10.0, renewed, steps, clock) == [31.0]
