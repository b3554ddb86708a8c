"""Request and response size limits, streaming, and the in-flight cap: B22, B23, B36."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from tests.http.apps import payload
from tests.http.conftest import Service, is_problem

Serve = Callable[..., Service]


def test_b22_request_body_above_the_limit_gets_413(serve: Serve) -> None:
    """A body above max_body_size gets 413 problem+json; nothing runs, nothing is stored."""
    service = serve(max_body_size=100)
    response = service.post("/echo", "k", content=b"x" * 101)
    assert is_problem(response, 413, "body-too-large")
    assert service.recorder.calls["/echo"] == 0
    assert service.records() == []
    assert service.post("/echo", "k", content=b"x" * 100).status_code == 200


def test_b22_chunked_request_body_above_the_limit_gets_413(serve: Serve) -> None:
    """A chunked body (no Content-Length) is counted as it arrives: 413 past the limit."""
    service = serve(max_body_size=100)

    def chunks() -> Iterator[bytes]:
        for _ in range(5):
            yield b"y" * 30

    response = service.post("/echo", "k", content=chunks())
    assert is_problem(response, 413, "body-too-large")
    assert service.recorder.calls["/echo"] == 0
    assert service.records() == []


def test_b22_requests_without_a_key_are_not_limited(serve: Serve) -> None:
    """The body limit applies to tracked requests; untracked ones go to the app as they are."""
    service = serve(max_body_size=10)
    assert service.post("/echo", content=b"z" * 1000).status_code == 200


def test_b22_response_above_the_storable_limit_is_sent_once_and_never_rerun(
    serve: Serve,
) -> None:
    """A response too large to store reaches the client whole; a retry gets the 410 problem
    (with the replay header) and the handler does not run again."""
    service = serve(max_response_size=10)
    first = service.post("/payments", "k", json={"amount": 123456789})
    assert first.status_code == 201
    assert first.json()["body"] == {"amount": 123456789}
    retry = service.post("/payments", "k", json={"amount": 123456789})
    assert is_problem(retry, 410, "response-not-stored")
    assert retry.headers["idempotent-replayed"] == "true"
    assert "201" in retry.json()["detail"]
    assert service.recorder.calls["/payments"] == 1


def test_b23_streaming_response_is_replayed_as_one_body(serve: Serve) -> None:
    """A streamed response under the limit is captured and replayed byte for byte."""
    service = serve(max_response_size=10_000)
    first = service.post("/stream?size=5000&chunks=7", "k")
    assert first.content == payload(5000)
    retry = service.post("/stream?size=5000&chunks=7", "k")
    assert retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers["content-length"] == "5000"
    assert retry.headers["idempotent-replayed"] == "true"
    assert service.recorder.calls["/stream"] == 1


def test_b23_streaming_response_above_the_limit_follows_the_b22_policy(serve: Serve) -> None:
    """A stream that passes the limit is streamed through whole, then never rerun."""
    service = serve(max_response_size=1000)
    first = service.post("/stream?size=50000&chunks=20", "k")
    assert first.status_code == 201
    assert first.content == payload(50000)
    retry = service.post("/stream?size=50000&chunks=20", "k")
    assert is_problem(retry, 410, "response-not-stored")
    assert service.recorder.calls["/stream"] == 1
    (record,) = service.records()
    assert record.size < 1000


def test_b36_in_flight_cap_per_scope_answers_429(serve: Serve) -> None:
    """With max_in_flight_per_scope=1 a second key of a busy scope gets 429; others run."""
    service = serve(max_in_flight_per_scope=1, wait=0)
    alice = {"Authorization": "alice"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(service.post, "/gate", "k1", headers=alice)
        assert service.recorder.entered.wait(10)
        second = service.post("/gate", "k2", headers=alice)
        assert is_problem(second, 429, "too-many-in-flight")
        assert int(second.headers["retry-after"]) >= 1
        bob = pool.submit(service.post, "/gate", "k1", headers={"Authorization": "bob"})
        service.recorder.gate.set()
        assert first.result(10).status_code == 201
        assert bob.result(10).status_code == 201
    assert service.recorder.calls["/gate"] == 2
    # The refused key left nothing behind: it runs once the scope has room.
    assert service.post("/gate", "k2", headers=alice).status_code == 201


def test_b36_key_length_body_and_response_limits_hold_together(serve: Serve) -> None:
    """Under one configuration every resource limit answers its own problem."""
    service = serve(max_body_size=50, max_response_size=10)
    assert is_problem(service.post("/echo", "k" * 300, content=b"{}"), 400, "invalid-key")
    assert is_problem(service.post("/echo", "k", content=b"x" * 51), 413, "body-too-large")
    assert service.post("/echo", "k", content=b"x" * 50).status_code == 200
    assert is_problem(service.post("/echo", "k", content=b"x" * 50), 410, "response-not-stored")
