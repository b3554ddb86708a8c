"""Mismatch, concurrency, leases and fencing on real servers: B13-B17."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from retrysafe import FencedError, Identity, ManualClock
from retrysafe._http import RequestView, Settings
from tests.http.conftest import Service, credential_scope, is_problem, parallel, wait_until

Serve = Callable[..., Service]


def _background(call: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def test_b13_mismatch_gets_422_and_leaves_the_record_untouched(serve: Serve) -> None:
    """Same key, other body: 422 every time; the original outcome still replays."""
    service = serve()
    first = service.post("/payments", "k", json={"amount": 1})
    for _ in range(2):
        assert is_problem(service.post("/payments", "k", json={"amount": 2}), 422, "key-mismatch")
    replay = service.post("/payments", "k", json={"amount": 1})
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/payments"] == 1


@pytest.mark.parametrize("status", [400, 409])
def test_b13_mismatch_status_is_configurable(serve: Serve, status: int) -> None:
    """mismatch_status=400 (Stripe parity) or 409 changes the status, not the problem."""
    service = serve(mismatch_status=status)
    service.post("/payments", "k", json={"amount": 1})
    response = service.post("/payments", "k", json={"amount": 2})
    assert is_problem(response, status, "key-mismatch")


def test_b13_mismatch_is_checked_before_in_flight(serve: Serve) -> None:
    """While the first request runs, a different request with its key gets 422, not 409."""
    service = serve(wait=0)
    first = _background(lambda: service.post("/gate", "k", content=b"one"))
    assert service.recorder.entered.wait(10)
    other = service.post("/gate", "k", content=b"two")
    assert is_problem(other, 422, "key-mismatch")
    service.recorder.gate.set()
    assert first.result(10).status_code == 201
    assert service.recorder.calls["/gate"] == 1


def test_b14_duplicate_in_flight_gets_409_with_retry_after(serve: Serve) -> None:
    """Without wait mode a duplicate of a running request gets 409 and Retry-After."""
    service = serve(wait=0)
    first = _background(lambda: service.post("/gate", "k"))
    assert service.recorder.entered.wait(10)
    duplicate = service.post("/gate", "k")
    assert is_problem(duplicate, 409, "request-in-flight")
    assert int(duplicate.headers["retry-after"]) >= 1
    service.recorder.gate.set()
    assert first.result(10).status_code == 201
    assert service.post("/gate", "k").headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/gate"] == 1


def test_b14_fifty_parallel_duplicates_without_wait_run_once(serve: Serve) -> None:
    """50 parallel identical requests, wait=0: the handler runs once, the other 49 get 409."""
    service = serve(wait=0)
    finished = []
    lock = threading.Lock()

    def send(_: int) -> httpx.Response:
        response = service.post("/gate", "same")
        with lock:
            finished.append(response)
        return response

    run = _background(lambda: parallel(50, send))
    wait_until(lambda: len(finished) == 49)  # everyone but the one in the handler
    service.recorder.gate.set()
    responses = run.result(15)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 49
    assert all(is_problem(r, 409, "request-in-flight") for r in responses if r.status_code == 409)
    assert service.recorder.calls["/gate"] == 1


def test_b15_fifty_parallel_duplicates_in_wait_mode_all_get_the_one_outcome(
    serve: Serve,
) -> None:
    """In wait mode 50 parallel identical requests all get the one outcome; one execution."""
    service = serve(wait=10)

    def open_gate() -> None:
        service.recorder.entered.wait(10)
        time.sleep(0.2)  # let the duplicates arrive and wait; not a timing assertion
        service.recorder.gate.set()

    opener = _background(open_gate)
    responses = parallel(50, lambda _: service.post("/gate", "same"))
    opener.result(10)
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert sum("idempotent-replayed" in r.headers for r in responses) == 49
    assert service.recorder.calls["/gate"] == 1


def test_b15_wait_that_times_out_gets_409(serve: Serve) -> None:
    """A duplicate waits up to `wait` seconds, then gets 409 if the first is still running."""
    service = serve(wait=0.2)
    first = _background(lambda: service.post("/gate", "k"))
    assert service.recorder.entered.wait(10)
    assert is_problem(service.post("/gate", "k"), 409, "request-in-flight")
    service.recorder.gate.set()
    assert first.result(10).status_code == 201


def test_b15_a_client_that_times_out_gets_the_outcome_on_retry(serve: Serve) -> None:
    """A client gives up on a slow request; its retry waits and gets the one outcome."""
    service = serve(wait=10)
    with pytest.raises(httpx.ReadTimeout):
        service.client.post("/slow?seconds=0.5", headers={"Idempotency-Key": "k"}, timeout=0.1)
    retry = service.post("/slow?seconds=0.5", "k")
    assert retry.status_code == 201
    assert retry.json() == {"n": 1}
    assert service.recorder.calls["/slow"] == 1


def test_b16_heartbeat_keeps_a_handler_slower_than_its_lease_from_running_twice(
    serve: Serve,
) -> None:
    """A handler running 2.5 leases long renews its lease; duplicates meanwhile get 409."""
    service = serve(lease=0.6, wait=0)
    first = _background(lambda: service.post("/slow?seconds=1.5", "k"))
    wait_until(lambda: service.recorder.calls["/slow"] == 1)
    while not first.done():
        duplicate = service.post("/slow?seconds=1.5", "k")
        assert duplicate.status_code in (409, 201), duplicate.text
        time.sleep(0.1)
    assert first.result().status_code == 201
    assert service.recorder.calls["/slow"] == 1
    assert service.post("/slow?seconds=1.5", "k").headers["idempotent-replayed"] == "true"


SECRET = "a secret of at least 16 bytes"


def _crashed_claim(service: Service, identity: Identity, path: str) -> str:
    """Claim `identity` as a worker that then crashed would have; return its token."""
    request = RequestView("POST", path, b"", (), {})
    fingerprint = Settings(fingerprint="raw").fingerprint_of(request, b"")
    claim = service.store_call("claim", identity, fingerprint, lease=30, retention=3600)
    assert claim.acquired
    return str(claim.token)


def test_b16_after_a_crash_the_lease_expires_and_a_retry_takes_over(serve: Serve) -> None:
    """Before the crashed claim's lease ends retries get 409; after it, a retry runs."""
    clock = ManualClock()
    service = serve(clock=clock, wait=0, scope_secret=SECRET)
    identity = Identity("http", credential_scope(SECRET), "k")
    token = _crashed_claim(service, identity, "/status/201")
    assert is_problem(service.post("/status/201", "k"), 409, "request-in-flight")
    assert service.recorder.calls["/status"] == 0
    clock.advance(31)
    taken = service.post("/status/201", "k")
    assert taken.status_code == 201
    assert service.recorder.calls["/status"] == 1
    with pytest.raises(FencedError):  # B17: the crashed worker's token is dead
        service.store_call("complete", identity, token, b"x", retention=1)


def test_b17_a_fenced_worker_cannot_overwrite_the_new_owners_outcome(serve: Serve) -> None:
    """A worker whose lease was taken over finishes; its outcome is not stored, the new one is."""
    clock = ManualClock()
    service = serve(clock=clock, wait=0)
    first = _background(lambda: service.post("/gate", "k"))
    wait_until(lambda: service.recorder.calls["/gate"] == 1)
    clock.advance(31)  # the first worker's lease (30 s) ends while it is still running
    second = _background(lambda: service.post("/gate", "k"))
    wait_until(lambda: service.recorder.calls["/gate"] == 2)
    service.recorder.gate.set()
    assert first.result(10).json() == {"n": 1}  # the fenced worker's client still gets its answer
    assert second.result(10).json() == {"n": 2}
    assert service.middleware.counters.fenced == 1
    replay = service.post("/gate", "k")
    assert replay.json() == {"n": 2}
    assert replay.headers["idempotent-replayed"] == "true"
