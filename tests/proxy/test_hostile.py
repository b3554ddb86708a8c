"""`retrysafe proxy` under hostile bytes on raw sockets: it forwards only to its upstream (B37)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.conftest import Proxy, Recorder, Upstream, records
from tests.proxy.raw import CALLER, RawServer, answer_ok, exchange, misbehave, request

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]


@pytest.fixture(scope="module")
def internal() -> Iterator[RawServer]:
    """A server no request may reach: an 'internal admin' service beside the upstream."""
    server = RawServer(answer_ok)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def broken() -> Iterator[RawServer]:
    """An upstream that breaks its answers (short bodies, resets, garbage)."""
    server = RawServer(misbehave)
    yield server
    server.stop()


def odd_answers(head: bytes, conn: socket.socket) -> None:
    """Answer by the request's path: /tecl with both framings, /cut with half of a body past
    the storable size, /status-NNN with status NNN, else 200 (for the path-prefixed proxy)."""
    path = head.split(b" ", 2)[1]
    if path.startswith(b"/tecl"):  # chunked, so the body is 5 bytes, not the 3 announced
        conn.sendall(
            b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
    elif path.startswith(b"/cut"):  # past the proxy's storable size, then the upstream is gone
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 3000000\r\n\r\n")
        conn.sendall(b"x" * 1_500_000)
    elif path.startswith(b"/status-"):
        status = path.removeprefix(b"/status-")[:3]
        conn.sendall(b"HTTP/1.1 " + status + b" Weird\r\nContent-Length: 2\r\n\r\nok")
    else:
        answer_ok(head, conn)


@pytest.fixture(scope="module")
def odd() -> Iterator[RawServer]:
    """An upstream whose answers are odd but parse: both framings, a status above 599."""
    server = RawServer(odd_answers)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite store of the guarded proxy, opened by the tests to count its records."""
    return tmp_path_factory.mktemp("hostile") / "keys.db"


@pytest.fixture(scope="module")
def ports(
    upstream: Upstream, broken: RawServer, odd: RawServer, store_path: Path, proxies: Start
) -> dict[str, int]:
    """Proxy ports: `guarded` before the real upstream, `broken` before the broken one, `odd`
    before the odd one, and `prefixed` before it under the path prefix `/public/api` (sharing
    the guarded proxy's store)."""
    names = ["guarded", "broken", "odd", "prefixed"]
    started = proxies(
        [
            (["--upstream", upstream.url, "--store", f"sqlite:///{store_path}"], None),
            (["--upstream", broken.url, "--store", "memory://"], None),
            (["--upstream", odd.url, "--store", "memory://"], None),
            (["--upstream", f"{odd.url}/public/api", "--store", f"sqlite:///{store_path}"], None),
        ]
    )
    return {name: int(p.url.rsplit(":", 1)[1]) for name, p in zip(names, started, strict=True)}


def ssrf_targets(port: int) -> list[str]:
    """Request-targets that would reach 127.0.0.1:port if appended to the upstream URL."""
    return [
        f"@127.0.0.1:{port}/internal-admin",
        f"http://127.0.0.1:{port}/internal-admin",
        f"https://127.0.0.1:{port}/x",
        f":{port}/internal-admin",
        f".127.0.0.1:{port}/x",
        f"@127.0.0.1:{port}",
        "*",
        f"127.0.0.1:{port}",
        f"?@127.0.0.1:{port}/",
        f"/#@127.0.0.1:{port}/x",
    ]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b37_non_origin_targets_are_400_and_reach_no_other_host(
    ports: dict[str, int], internal: RawServer, recorder: Recorder, store_path: Path, keyed: bool
) -> None:
    """Every request-target that is not origin-form is a 400 invalid-target problem: nothing
    reaches the internal server or the upstream, and the store keeps no record."""
    before = records(store_path)
    for target in ssrf_targets(internal.port):
        for method in (b"POST", b"OPTIONS", b"GET"):
            response = exchange(ports["guarded"], request(target, method=method, key=keyed))
            assert response is not None, target
            assert response.status == 400, (target, response)
            if response.headers.get("content-type") == "application/problem+json":
                assert response.problem()["type"].endswith("#invalid-target"), response
    assert internal.count() == 0
    assert sum(recorder.calls.values()) == 0
    assert records(store_path) == before


def test_b37_double_slash_paths_stay_on_the_upstream(
    ports: dict[str, int], internal: RawServer, recorder: Recorder
) -> None:
    """`//host:port/x` is an origin-form path: it goes to the upstream as a path, not a host."""
    response = exchange(ports["guarded"], request(f"//127.0.0.1:{internal.port}/payments"))
    assert response is not None
    assert response.status == 404  # the upstream's answer for that path
    assert internal.count() == 0


def targets_seen(server: RawServer) -> list[bytes]:
    """Return the request-targets that reached `server`, in order."""
    return [head.split(b" ", 2)[1] for head in server.requests]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b37_dot_segments_are_400_and_never_leave_the_upstream_path_prefix(
    ports: dict[str, int], odd: RawServer, store_path: Path, keyed: bool
) -> None:
    """A target with a `.` or `..` segment, literal or percent-encoded, and also where a
    segment ends at an encoded slash or a backslash, is a 400 invalid-target problem (nothing
    reaches the upstream, the store keeps no record), while dots inside a segment's name are
    forwarded under the upstream's path prefix."""
    before, seen = records(store_path), len(odd.requests)
    for target in ["/../../admin/users", "/x/../../../internal/debug", "/..", "/a/..",
                   "/./admin", "/%2e%2e/admin", "/%2E%2e/admin", "/.%2E/admin", "/x/%2e",
                   "/%2e./admin?a=b", "/%2e%2e%2f%2e%2e%2fadmin", "/..%2f..%2fadmin",
                   "/..%5c..%5cadmin", "/..\\..\\admin", "/x%2F..", "/%5C.%5Cx"]:  # fmt: skip
        response = exchange(ports["prefixed"], request(target, key=keyed))
        assert response is not None, target
        assert response.status == 400, (target, response)
        assert response.problem()["type"].endswith("#invalid-target"), response
    assert records(store_path) == before
    assert targets_seen(odd)[seen:] == []
    for target in ["/a/.../b..c/.x?q=/../", "/a%2F...%5Cb..c\\.x"]:
        response = exchange(ports["prefixed"], request(target, key=False))
        assert response is not None
        assert response.status == 200
    # httpx before 0.28 sends a raw backslash percent-encoded: either way, the same path
    assert [t.replace(b"\\", b"%5C") for t in targets_seen(odd)[seen:]] == [
        b"/public/api/a/.../b..c/.x?q=/../",
        b"/public/api/a%2F...%5Cb..c%5C.x",
    ]


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
@pytest.mark.parametrize(
    "framing",
    [
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 500\r\nTransfer-Encoding: chunked\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: identity\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked, chunked\r\n",
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=[
        "te-then-cl",
        "cl-then-te",
        "cl-larger",
        "identity",
        "gzip-chunked",
        "chunked-twice",
        "two-te-lines",
    ],
)
def test_b37_content_length_with_transfer_encoding_is_refused(
    ports: dict[str, int], recorder: Recorder, store_path: Path, framing: bytes, keyed: bool
) -> None:
    """A request with both Transfer-Encoding (of any coding, once or twice) and Content-Length
    is a 400 invalid-framing problem that closes the connection (never uvicorn's plain text,
    B24); nothing is forwarded or stored."""
    before = records(store_path)
    keyed_line = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode() if keyed else b""
    raw = (
        b"POST /payments HTTP/1.1\r\nHost: proxy.test\r\n" + CALLER + keyed_line + framing
        + b"\r\n2\r\n{}\r\n0\r\n\r\n"
    )  # fmt: skip
    response = exchange(ports["guarded"], raw)
    assert response is not None
    assert response.status == 400
    assert response.problem()["type"].endswith("#invalid-framing")
    assert response.headers["connection"] == "close"
    assert recorder.calls["/payments"] == 0
    assert records(store_path) == before


def test_b37_chunked_bodies_are_forwarded_with_their_own_length(
    ports: dict[str, int], recorder: Recorder
) -> None:
    """A chunked request body reaches the upstream whole, framed by the proxy itself."""
    raw = (
        b"POST /payments HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n" + CALLER +
        b'Idempotency-Key: "' + str(uuid.uuid4()).encode() + b'"\r\n'
        b"Transfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n"
    )  # fmt: skip
    response = exchange(ports["guarded"], raw)
    assert response is not None
    assert response.status == 201
    assert response.body.startswith(b'{"n":1,"body":"{\\"a\\": 1}"')
    assert recorder.calls["/payments"] == 1


@pytest.mark.parametrize("path", ["/short", "/reset", "/garbage", "/close"])
@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
def test_b37_a_broken_upstream_answer_is_a_502_problem(
    ports: dict[str, int], broken: RawServer, path: str, keyed: bool
) -> None:
    """An upstream that sends a short body, resets, sends garbage or closes silently gives a
    502 upstream-failed problem, never a plain-text 500."""
    response = exchange(ports["broken"], request(path, key=keyed))
    assert response is not None
    assert response.status == 502
    assert response.problem()["type"].endswith("#upstream-failed")
    assert b"Traceback" not in response.body


def test_b37_an_upstream_content_length_beside_transfer_encoding_is_dropped(
    ports: dict[str, int], odd: RawServer
) -> None:
    """An upstream response with both Transfer-Encoding (chunked) and a stale Content-Length
    reaches the client whole, without that Content-Length: keyed, its body is stored and
    replayed; without a key, it is forwarded all the same."""
    key = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode()
    first = exchange(ports["odd"], request("/tecl/keyed", key=False, headers=key))
    again = exchange(ports["odd"], request("/tecl/keyed", key=False, headers=key))
    keyless = exchange(ports["odd"], request("/tecl/keyless", key=False))
    for response in (first, again, keyless):
        assert response is not None
        assert (response.status, response.body) == (201, b"hello"), response
        assert response.headers.get("content-length") != "3", response
    assert again is not None
    assert again.headers["idempotent-replayed"] == "true"
    assert targets_seen(odd).count(b"/tecl/keyed") == 1


def test_b22_b38_a_large_answer_cut_mid_stream_is_never_forwarded_again(
    ports: dict[str, int], odd: RawServer
) -> None:
    """An upstream answer past the storable size streams to the client; when the upstream
    breaks off mid-body, the client's connection is cut, and the key keeps the "response not
    stored" outcome (the 201 went out): retries get 410 and never reach the upstream (it was
    released, and every retry ran the upstream again)."""
    path = f"/cut/{uuid.uuid4()}"
    key = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode()
    # No body: the upstream reads the whole request, so its close is a FIN after its bytes,
    # never a reset that could beat them to the proxy.
    first = exchange(ports["odd"], request(path, key=False, headers=key, body=b""))
    assert first is not None
    assert (first.status, len(first.body) < 3_000_000) == (201, True)
    for _ in range(2):
        again = exchange(ports["odd"], request(path, key=False, headers=key, body=b""))
        assert again is not None
        assert (again.status, again.problem()["type"].rsplit("#", 1)[-1]) == (
            410, "response-not-stored",
        )  # fmt: skip
    assert targets_seen(odd).count(path.encode()) == 1


@pytest.mark.parametrize("status", ["600", "999"])
def test_b37_b38_an_upstream_status_above_599_is_502_then_outcome_unknown(
    ports: dict[str, int], odd: RawServer, status: str
) -> None:
    """An upstream status above 599 is invalid HTTP, like a garbage status line: a 502
    upstream-failed problem, with or without a key; a keyed request's retries get
    `outcome-unknown` and are never forwarded again."""
    path = f"/status-{status}/{uuid.uuid4()}"
    keyless = exchange(ports["odd"], request(path + "/keyless", key=False))
    key = f'Idempotency-Key: "{uuid.uuid4()}"\r\n'.encode()
    answers = [exchange(ports["odd"], request(path, key=False, headers=key)) for _ in range(3)]
    kinds = []
    for response in (keyless, *answers):
        assert response is not None
        kinds.append((response.status, response.problem()["type"].rsplit("#", 1)[-1]))
    assert kinds == [(502, "upstream-failed")] * 2 + [(502, "outcome-unknown")] * 2
    assert targets_seen(odd).count(path.encode()) == 1


_TARGET_BYTES = st.sampled_from(
    [b"/", b"@", b":", b"?", b"#", b"%", b"*", b".", b"\\", b"a", b"1", b"127.0.0.1", b"http:",
     b"//", b"%2F", b"%00", b"\xff", b"\t", b" ", b"[::1]", b"~", b"&", b"="]
)  # fmt: skip
_FRAMING = st.lists(
    st.sampled_from(
        [b"Content-Length: 2\r\n", b"Content-Length: 0\r\n", b"Content-Length: 7\r\n",
         b"Content-Length: -1\r\n", b"Content-Length: 2, 2\r\n", b"Transfer-Encoding: chunked\r\n",
         b"Transfer-Encoding: gzip, chunked\r\n", b"Transfer-Encoding: identity\r\n",
         b"Transfer-Encoding:  chunked\r\n"]
    ),
    max_size=3,
)  # fmt: skip


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    target=st.lists(_TARGET_BYTES, max_size=8).map(b"".join),
    framing=_FRAMING,
    keyed=st.booleans(),
)
def test_b37_fuzzed_targets_and_framing_never_500_nor_leave_the_upstream(
    ports: dict[str, int], internal: RawServer, target: bytes, framing: list[bytes], keyed: bool
) -> None:
    """Fuzzed request-targets and framing headers (fixed seed) never get a 500 and never make
    the proxy connect anywhere but its upstream."""
    target = target.replace(b"127.0.0.1", f"127.0.0.1:{internal.port}".encode()) or b"@"
    raw = request(target, headers=b"".join(framing), key=keyed).replace(
        b"Content-Length: 2\r\n", b"", 1 if framing else 0
    )
    response = exchange(ports["guarded"], raw + b"2\r\n{}\r\n0\r\n\r\n")
    if response is not None:
        assert response.status < 500 or response.status in (501, 502), response
        assert b"Traceback" not in response.body
    assert internal.count() == 0
