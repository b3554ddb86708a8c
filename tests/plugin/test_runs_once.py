"""`assert_runs_once` passes retry-safe apps and functions and catches the ones that are not."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from retrysafe import ConfigurationError, idempotent, open_store
from retrysafe.testing import HTTPRequest, RunCounter, assert_runs_once

pytest_plugins = ["pytester"]

SAMPLE_TESTS = """
from pathlib import Path

import pytest

from payments import AUTH, asgi_app, effect_outside, wsgi_app
from retrysafe.testing import HTTPRequest, aassert_runs_once

PAY = HTTPRequest("POST", "/payments", json={"amount": 100}, headers=AUTH)


def test_asgi_app(retrysafe_counter, retrysafe_assert_runs_once, retrysafe_sqlite_store_url):
    app = asgi_app(retrysafe_counter, idempotent_=True, store_url=retrysafe_sqlite_store_url)
    report = retrysafe_assert_runs_once(app, runs=retrysafe_counter, request=PAY)
    assert report.summary() == "201 x1, 201 replayed x7"


def test_wsgi_app(retrysafe_counter, retrysafe_assert_runs_once, retrysafe_store):
    app = wsgi_app(retrysafe_counter, idempotent_=True, store=retrysafe_store)
    retrysafe_assert_runs_once(app, runs=retrysafe_counter, request=PAY, duplicates=5)


@pytest.mark.anyio
async def test_asgi_app_in_an_async_test(retrysafe_counter):
    app = asgi_app(retrysafe_counter, idempotent_=True)
    await aassert_runs_once(app, runs=lambda: retrysafe_counter.count, request=PAY)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_asgi_without_middleware(retrysafe_counter, retrysafe_assert_runs_once):
    app = asgi_app(retrysafe_counter, idempotent_=False)
    retrysafe_assert_runs_once(app, runs=retrysafe_counter, request=PAY)


def test_wsgi_without_middleware(retrysafe_counter, retrysafe_assert_runs_once):
    app = wsgi_app(retrysafe_counter, idempotent_=False)
    retrysafe_assert_runs_once(app, runs=retrysafe_counter, request=PAY, duplicates=4)


def test_effect_outside_the_idempotent_part(
    retrysafe_counter, retrysafe_assert_runs_once, retrysafe_memory_store
):
    checkout = effect_outside(retrysafe_counter, retrysafe_memory_store)
    retrysafe_assert_runs_once(checkout, runs=retrysafe_counter, args=("order-1",))
"""


def test_retry_safe_handlers_pass_and_non_idempotent_ones_are_caught(
    sample: pytest.Pytester,
) -> None:
    """In a sample project, the apps behind the middleware pass (ASGI, WSGI, async test), and
    the app without it and the effect outside the idempotent part fail with a report."""
    sample.makepyfile(test_payments=SAMPLE_TESTS)
    result = sample.runpytest("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("failed")) == (4, 3), result.stdout.str()
    result.stdout.fnmatch_lines_random(
        [
            "*POST /payments on ASGI app Starlette: the effect ran 8 times for 8 concurrent"
            " duplicates with key '*', not exactly once. Outcomes seen: 201 x8.",
            "*POST /payments on WSGI app Flask.wsgi_app: the effect ran 4 times for 4*"
            "Outcomes seen: 201 x4.",
            "*effect_outside.<locals>.checkout(): the effect ran 8 times for 8 concurrent"
            " duplicates, not exactly once. Outcomes seen: returned x8.",
        ]
    )


def test_a_sync_idempotent_function_runs_once_on_real_threads(tmp_path: Path) -> None:
    """Eight threads calling an `@idempotent` function with one key run its body once."""
    charges = RunCounter()
    threads: set[str] = set()
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}")

    @idempotent(store, key="order")
    def charge(order: str) -> str:
        import threading

        threads.add(threading.current_thread().name)
        charges.increment()
        return order

    try:
        report = assert_runs_once(charge, runs=charges, args=("order-1",))
    finally:
        store.close()
    assert report.runs == 1
    assert report.outcomes == ("returned",) * 8
    assert threads <= {f"retrysafe-duplicate-{i}" for i in range(8)}


def test_an_effect_that_never_runs_fails_too() -> None:
    """Zero runs is not once: a handler that does nothing is reported, with the outcomes."""
    counted = RunCounter()

    def refuse(order: str) -> str:
        raise ValueError(f"no {order}")

    with pytest.raises(AssertionError, match=r"ran 0 times .* raised ValueError: no o x3"):
        assert_runs_once(refuse, runs=counted, args=("o",), duplicates=3)


def test_duplicates_still_running_at_the_timeout_fail_the_check() -> None:
    """A function that is not retry-safe, whose duplicates after the first block (until the
    test lets them go): one run when the timeout ends is not proof of once, so the check
    fails and says so (before: it passed, and the blocked duplicates then ran the effect)."""
    counted, first, go = RunCounter(), threading.Lock(), threading.Event()

    def charge(order: str) -> str:
        if not first.acquire(blocking=False):
            go.wait(30)  # a duplicate still running when the count is read
        counted.increment()
        return order

    try:
        with pytest.raises(AssertionError, match="2 did not finish within the timeout"):
            assert_runs_once(charge, runs=counted, args=("o",), duplicates=3, timeout=0.5)
    finally:
        go.set()


def test_misuse_is_a_configuration_error() -> None:
    """One duplicate, or an HTTP request for a function, is refused with a precise message."""
    counted = RunCounter()
    with pytest.raises(ConfigurationError, match="duplicates must be at least 2"):
        assert_runs_once(print, runs=counted, duplicates=1)
    with pytest.raises(ConfigurationError, match="args and kwargs are for functions"):
        assert_runs_once(
            print, runs=counted, request=HTTPRequest("POST", "/"), args=(1,), interface="wsgi"
        )
    with pytest.raises(ConfigurationError, match="pass request=HTTPRequest"):
        assert_runs_once(print, runs=counted, interface="asgi")
