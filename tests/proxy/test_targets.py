"""`retrysafe proxy` refuses the request-targets it cannot forward as they are, before the store:
an over-long one, a CONNECT, one that makes no URL under the upstream's (B37), always as a
problem, never as a 500 or a logged traceback (B24)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import Proxy, StderrLines, records
from tests.proxy.raw import RawServer, answer_ok, exchange, read_response, request

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
Running = dict[str, tuple[int, StderrLines]]
"""The proxies by name: the port each listens on, and its stderr."""
MAX_TARGET = 8192
"""The longest request-target the proxy forwards, in bytes (docs/proxy.md)."""
HEAD_LIMIT = 16 * 1024
"""The largest request head the proxy's HTTP parser buffers while it arrives in pieces."""
LONG_PREFIX = "/" + "p" * 60_000
"""An upstream path prefix that leaves less room for a target than httpx's 65,536 characters."""


@pytest.fixture(scope="module")
def tunnel() -> Iterator[RawServer]:
    """An upstream that answers 200 to anything, a CONNECT too (a tunnel the proxy must not
    open)."""
    server = RawServer(answer_ok)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SQLite store of the proxy, opened by the tests to count its records."""
    return tmp_path_factory.mktemp("targets") / "keys.db"


@pytest.fixture(scope="module")
def running(tunnel: RawServer, store_path: Path, proxies: Start) -> Running:
    """Proxies before `tunnel`, by name, with their stderr: `plain`, and `prefixed` under a
    path prefix of 60,000 characters."""
    started = proxies(
        [
            (["--upstream", tunnel.url, "--store", f"sqlite:///{store_path}"], None),
            (["--upstream", tunnel.url + LONG_PREFIX, "--store", "memory://"], None),
        ]
    )
    return {
        name: (int(proxy.url.rsplit(":", 1)[1]), StderrLines(proxy.process))
        for name, proxy in zip(["plain", "prefixed"], started, strict=True)
    }


def assert_no_traceback(port: int, stderr: StderrLines, since: int) -> None:
    """Fail if the proxy logged a traceback since the mark `since`: a request logged after
    the test's requests (its access line) shows that their lines have all been read."""
    target = f"/logged/{uuid.uuid4()}"
    assert exchange(port, request(target, method=b"GET", body=b"", key=False)) is not None
    last = stderr.wait_for(f"GET {target} 200", after=since)
    lines = [stderr.line(i) for i in range(since, last)]
    assert not [line for line in lines if "Traceback" in line or " 500 " in line], lines


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
@pytest.mark.parametrize(
    "target",
    [
        "/" + "a" * MAX_TARGET,
        "/q?" + "a" * (MAX_TARGET - 2),
        "/" + "a" * 70_000,
        "/q?" + "a" * 70_000,
    ],
    ids=["path-one-over", "query-one-over", "path-70000", "query-70000"],
)
def test_b37_b24_a_target_over_8_kib_is_a_414_problem_before_the_store(
    running: Running,
    tunnel: RawServer,
    store_path: Path,
    target: str,
    keyed: bool,
) -> None:
    """A request-target over 8,192 bytes, in its path or its query, is a 414 target-too-long
    problem (or, in a head over 16 KiB that arrives in pieces, 400 invalid-framing): nothing
    is forwarded or stored, nothing is logged as a failure; one of 8,192 bytes is forwarded."""
    port, stderr = running["plain"]
    before, seen, mark = records(store_path), tunnel.count(), stderr.mark()
    response = exchange(port, request(target, key=keyed))
    assert response is not None
    refused = (response.status, response.problem()["type"].rsplit("#", 1)[-1])
    split_head = {(400, "invalid-framing")} if len(target) > HEAD_LIMIT else set()
    assert refused in {(414, "target-too-long")} | split_head, response
    assert (records(store_path), tunnel.count()) == (before, seen)
    assert_no_traceback(port, stderr, mark)
    at_limit = exchange(port, request("/" + "b" * (MAX_TARGET - 1), key=False))
    assert at_limit is not None
    assert at_limit.status == 200


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "keyless"])
@pytest.mark.parametrize("target", ["/m", "/", "tunnel"])
def test_b37_connect_is_a_400_invalid_target_before_the_store(
    running: Running,
    tunnel: RawServer,
    store_path: Path,
    target: str,
    keyed: bool,
) -> None:
    """CONNECT, with an origin-form target or an authority-form one, is a 400 invalid-target
    problem: nothing is forwarded (no tunnel is opened) or stored, nothing is logged as a
    failure, and the connection serves the next request."""
    port, stderr = running["plain"]
    target = f"127.0.0.1:{tunnel.port}" if target == "tunnel" else target
    before, seen, mark = records(store_path), tunnel.count(), stderr.mark()
    connect = request(target, method=b"CONNECT", body=b"", key=keyed)
    then = request("/after-connect", method=b"GET", body=b"", key=False)
    with socket.create_connection(("127.0.0.1", port), 15) as sock:
        sock.sendall(connect.replace(b"Connection: close\r\n", b""))
        response = read_response(sock)
        assert response is not None
        assert response.status == 400, response
        assert response.problem()["type"].endswith("#invalid-target")
        assert (records(store_path), tunnel.count()) == (before, seen)
        sock.sendall(then)
        after = read_response(sock)
    assert after is not None
    assert after.status == 200
    assert_no_traceback(port, stderr, mark)


def test_b37_b24_a_target_that_makes_no_upstream_url_is_a_400_problem(
    running: Running, tunnel: RawServer
) -> None:
    """A target that fits the proxy's limit but not httpx's under a long upstream path prefix
    is a 400 invalid-target problem, never a 500 or a traceback; a short one is forwarded."""
    port, stderr = running["prefixed"]
    seen, mark = tunnel.count(), stderr.mark()
    response = exchange(port, request("/" + "t" * 6000, key=False))
    assert response is not None
    assert response.status == 400, response
    assert response.problem()["type"].endswith("#invalid-target")
    assert tunnel.count() == seen
    assert_no_traceback(port, stderr, mark)
