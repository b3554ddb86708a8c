"""The thread scheduler behind sync heartbeats: short operations never wake its thread, and a
job still runs when it falls due (B16)."""

from __future__ import annotations

import threading
import time

from retrysafe._heartbeat import ThreadScheduler


class _CountingCondition(threading.Condition):
    """A condition that counts the wake-ups asked of the scheduler's thread."""

    notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def _wait_until_asleep(scheduler: ThreadScheduler, deadline: float) -> None:
    """Return once the scheduler's thread has looked at its jobs and gone to sleep."""
    while scheduler._next_wake == float("inf"):
        assert time.monotonic() < deadline, "the scheduler thread never went to sleep"
        time.sleep(0.001)


def test_b16_short_operations_do_not_wake_the_scheduler_thread() -> None:
    """Once the thread sleeps, jobs started and stopped with the same delay ask no wake-up: the
    thread wakes no later than any of them falls due. A sooner job still wakes it, and runs."""
    scheduler = ThreadScheduler("test-heartbeat")
    condition = _CountingCondition()
    scheduler._cond = condition  # white box: count the notifications
    scheduler.stop(scheduler.start(lambda: None, 30.0))
    _wait_until_asleep(scheduler, time.monotonic() + 10)
    asked = condition.notified
    for _ in range(200):
        scheduler.stop(scheduler.start(lambda: None, 30.0))
    assert condition.notified == asked

    ran = threading.Event()

    def step() -> None:
        ran.set()

    scheduler.start(step, 0.01)  # due before the thread would wake: it is woken
    assert condition.notified == asked + 1
    assert ran.wait(timeout=10)


def test_b16_a_step_that_blocks_delays_no_other_job() -> None:
    """One job's step hangs (a renewal on a store that stopped answering, until its timeout):
    another job, an operation's renewals on a healthy store, keeps running when due, so its
    lease never lapses behind the hung one. The hung job is not started a second time."""
    scheduler = ThreadScheduler("test-heartbeat")
    hung, release = threading.Event(), threading.Event()
    hung_steps: list[int] = []
    healthy_steps: list[int] = []
    healthy_ran_thrice = threading.Event()

    def hang() -> float:
        hung_steps.append(1)
        hung.set()
        release.wait(timeout=30)
        return 0.001

    def renew() -> float:
        healthy_steps.append(1)
        if len(healthy_steps) == 3:
            healthy_ran_thrice.set()
        return 0.001

    stuck = scheduler.start(hang, 0.0)
    assert hung.wait(timeout=10)  # the first job's step is under way, and blocks
    healthy = scheduler.start(renew, 0.001)
    try:
        assert healthy_ran_thrice.wait(timeout=10)
        assert hung_steps == [1]
    finally:
        release.set()
        scheduler.stop(healthy)
        scheduler.stop(stuck)
