"""`retrysafe proxy` for its operator (issue 14): Prometheus metrics and a health check on
`--metrics-port`, an access log on stderr (`--quiet` turns it off), the store check at start,
and store outages and recoveries logged once each. Real proxy processes, real HTTP."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retrysafe._errors import FencedError, StoreUnavailableError
from retrysafe.asgi import Message, Receive, Scope, Send
from retrysafe.observe import Operation, StoreCall
from retrysafe.proxy._access import AccessLog
from retrysafe.proxy._health import StoreWatch
from retrysafe.stores import open_async_store
from tests.conftest import delete_redis_prefix, unique_name
from tests.proxy.conftest import (
    GATE_SECONDS,
    Proxy,
    Recorder,
    Relay,
    StderrLines,
    Upstream,
    proxy_command,
    start_proxies,
    stop_proxies,
    upstream_entered,
)
from tests.proxy.raw import RawServer, answer_ok

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
CALLER = {"Authorization": "Bearer ops-test"}
"""The credential clients send: the proxy scopes keys by it (B8)."""
_WAIT = 15.0
"""The bound on every wait for a process, a line or an answer."""
_RUN = 60.0
"""The bound on a proxy that fails as it starts: its start-up alone (imports) took over 15 s
once on a CI machine loaded with three test runs."""
GRACEFUL = (0, -signal.SIGTERM)
"""How a proxy exits after a graceful shutdown (uvicorn re-raises the signal it handled)."""
UNREACHABLE_STORE = "redis://127.0.0.1:1/0"
OUTAGE = "The idempotency store is failing"
RECOVERY = "The idempotency store answers again"


@dataclass
class Running:
    """A proxy under test: its URLs, its process and what it wrote on stderr."""

    url: str
    metrics: str | None
    proxy: Proxy
    stderr: StderrLines

    def stop(self) -> list[str]:
        """SIGTERM the proxy; check that it exits gracefully; return all it wrote on stderr."""
        self.proxy.process.terminate()
        assert self.proxy.process.wait(_WAIT) in GRACEFUL
        return self.stderr.until_exit()


@pytest.fixture(scope="module")
def raw_upstream() -> Iterator[RawServer]:
    """An upstream that answers 200 `internal` to every path and records what reached it."""
    server = RawServer(answer_ok)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(upstream: Upstream, raw_upstream: RawServer, proxies: Start) -> dict[str, Running]:
    """The proxies of this module, started at once: `metered` (metrics port, 409 at once),
    `forwarding` (metrics port, before the raw upstream), `quiet` (no access log) and `down`
    (a store that never answers, metrics port)."""
    specs: dict[str, tuple[list[str], bool]] = {
        "metered": (["--upstream", upstream.url, "--wait", "0"], True),
        "forwarding": (["--upstream", raw_upstream.url], True),
        "quiet": (["--upstream", upstream.url, "--quiet"], False),
        "down": (["--upstream", upstream.url, "--store", UNREACHABLE_STORE], True),
    }
    commands = []
    for args, metered in specs.values():
        store = [] if "--store" in args else ["--store", "memory://"]
        commands.append(([*args, *store, *(["--metrics-port", "0"] if metered else [])], None))
    started = proxies(commands)
    return {
        name: Running(proxy.url, proxy.metrics, proxy, StderrLines(proxy.process))
        for name, proxy in zip(specs, started, strict=True)
    }


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client for the test, sending `CALLER`."""
    with httpx.Client(timeout=_WAIT, headers=CALLER) as client_:
        yield client_


def key() -> dict[str, str]:
    """Return an Idempotency-Key header with a fresh key."""
    return {"Idempotency-Key": str(uuid.uuid4())}


def decisions(client: httpx.Client, metrics_url: str) -> Counter[str]:
    """Scrape `/metrics`; return `retrysafe_requests_total{face="proxy"}` by decision."""
    response = client.get(f"{metrics_url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "retrysafe_requests_total":
                assert sample.labels["face"] == "proxy"
                counts[sample.labels["decision"]] = int(sample.value)
    return counts


def test_metrics_count_what_the_proxy_decided(
    running: dict[str, Running], client: httpx.Client, recorder: Recorder
) -> None:
    """After executions, replays, a mismatch, a 409 and two 400s, `/metrics` on the metrics
    port counts each decision once; an untracked request is not counted."""
    proxy = running["metered"]
    assert proxy.metrics is not None
    before = decisions(client, proxy.metrics)
    first = key()
    assert client.post(f"{proxy.url}/payments", json={"a": 1}, headers=first).status_code == 201
    for _ in range(2):
        replay = client.post(f"{proxy.url}/payments", json={"a": 1}, headers=first)
        assert replay.headers["idempotent-replayed"] == "true"
    assert client.post(f"{proxy.url}/payments", json={"a": 2}, headers=first).status_code == 422
    held = key()
    answers: list[int] = []
    holder = threading.Thread(
        target=lambda: answers.append(client.post(f"{proxy.url}/gate", headers=held).status_code)
    )
    holder.start()
    try:
        upstream_entered(recorder)
        assert client.post(f"{proxy.url}/gate", headers=held).status_code == 409
    finally:
        recorder.gate.set()
        holder.join(GATE_SECONDS)
    assert answers == [201]
    too_long = {"Idempotency-Key": "k" * 300}
    assert client.post(f"{proxy.url}/payments", json={}, headers=too_long).status_code == 400
    anonymous = httpx.post(f"{proxy.url}/payments", json={}, headers=key(), timeout=_WAIT)
    assert anonymous.status_code == 400  # no Authorization: scope-missing (B8)
    assert client.get(f"{proxy.url}/payments").status_code == 201  # untracked
    after = decisions(client, proxy.metrics)
    assert after - before == Counter(
        execute=2, replay=2, mismatch=1, in_flight=1, invalid=1, rejected=1
    )


def test_healthz_answers_on_the_metrics_port(
    running: dict[str, Running], client: httpx.Client
) -> None:
    """`GET /healthz` on the metrics port is 200 while the store answers; other paths and
    methods there are refused."""
    metrics = running["metered"].metrics
    health = client.get(f"{metrics}/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert client.head(f"{metrics}/healthz").status_code == 200
    assert client.post(f"{metrics}/healthz").status_code == 405
    assert client.get(f"{metrics}/payments").status_code == 404


def test_the_proxied_port_forwards_metrics_and_healthz(
    running: dict[str, Running], client: httpx.Client, raw_upstream: RawServer
) -> None:
    """On the proxied port, `/metrics` and `/healthz` are the upstream's paths like any
    other: forwarded, answered by the upstream, never shadowed by the proxy."""
    proxy = running["forwarding"]
    for path in ("/metrics", "/healthz"):
        response = client.get(f"{proxy.url}{path}")
        assert (response.status_code, response.content) == (200, b"internal")
        assert any(head.startswith(f"GET {path} ".encode()) for head in raw_upstream.requests)
    assert proxy.metrics is not None
    assert "retrysafe_requests_total" in client.get(f"{proxy.metrics}/metrics").text


def test_access_log_has_a_line_per_request(
    running: dict[str, Running], client: httpx.Client
) -> None:
    """Each request gets one line on stderr: method, path as sent, status, decision (`-` when
    untracked) and duration; a percent-encoded control character stays encoded."""
    proxy = running["metered"]
    mark = proxy.stderr.mark()
    same = key()
    assert client.post(f"{proxy.url}/headers", json={}, headers=same).status_code == 200
    assert client.post(f"{proxy.url}/headers", json={}, headers=same).status_code == 200
    assert client.get(f"{proxy.url}/headers?token=secret").status_code == 200
    assert client.get(f"{proxy.url}/esc%1B%5B2J").status_code == 404
    expected = [
        "POST /headers 200 execute ",
        "POST /headers 200 replay ",
        "GET /headers 200 - ",
        "GET /esc%1B%5B2J 404 - ",
    ]
    for text in expected:
        mark = proxy.stderr.wait_for(text, after=mark) + 1
        line = proxy.stderr.line(mark - 1)
        assert "INFO retrysafe.proxy.access: 127.0.0.1 " in line
        assert line.endswith(" ms")
        assert "secret" not in line  # the query string is not logged
        assert "\x1b" not in line


def test_quiet_proxy_logs_no_access_lines(
    running: dict[str, Running], client: httpx.Client
) -> None:
    """`--quiet`: requests are served and logged nowhere; the store check at start still is."""
    proxy = running["quiet"]
    assert client.post(f"{proxy.url}/payments", json={}, headers=key()).status_code == 201
    assert client.get(f"{proxy.url}/payments").status_code == 201
    lines = proxy.stop()
    assert any("The idempotency store answers" in line for line in lines), lines
    assert not [line for line in lines if "retrysafe.proxy.access" in line], lines


def test_unreachable_store_is_said_once_and_fails_closed(
    running: dict[str, Running], client: httpx.Client
) -> None:
    """A store that never answers: one line at start says so, the proxy serves anyway,
    keyed requests get 503 `store-unavailable`, `/healthz` 503, and however many requests
    fail, the outage is not logged again; the proxy still stops gracefully."""
    proxy = running["down"]
    assert proxy.metrics is not None
    start = proxy.stderr.wait_for("unreachable at start")
    assert "WARNING retrysafe.proxy" in proxy.stderr.line(start)
    for _ in range(3):
        response = client.post(f"{proxy.url}/payments", json={}, headers=key())
        assert response.status_code == 503
        assert response.json()["type"].endswith("#store-unavailable")
        health = client.get(f"{proxy.metrics}/healthz")
        assert health.status_code == 503
        assert health.headers["content-type"] == "application/problem+json"
    assert client.get(f"{proxy.url}/payments").status_code == 201  # untracked: forwarded
    assert decisions(client, proxy.metrics)["unavailable"] == 3
    lines = proxy.stop()
    about_the_store = [line for line in lines if "WARNING" in line or "ERROR" in line]
    assert about_the_store == [proxy.stderr.line(start)], lines
    assert sum(" 503 unavailable " in line for line in lines) == 3, lines
    assert not [line for line in lines if "Traceback" in line]


def test_outage_and_recovery_are_logged_once_each(
    redis_url: str, upstream: Upstream, client: httpx.Client
) -> None:
    """A Redis store whose link is cut while the proxy runs: the first failing request logs
    the outage, the next ones do not; the first answer after the link is back logs the
    recovery with how many requests got 503 meanwhile."""
    parts = httpx.URL(redis_url)
    relay = Relay((parts.host, parts.port or 6379))
    prefix = unique_name()
    store = f"redis://127.0.0.1:{relay.port}{parts.path}?prefix={prefix}"
    started = start_proxies([(["--upstream", upstream.url, "--store", store], None)])
    proxy = Running(started[0].url, None, started[0], StderrLines(started[0].process))
    try:
        proxy.stderr.wait_for("The idempotency store answers (")
        assert client.post(f"{proxy.url}/payments", json={}, headers=key()).status_code == 201
        relay.cut()
        for _ in range(3):
            assert client.post(f"{proxy.url}/payments", json={}, headers=key()).status_code == 503
        proxy.stderr.wait_for(OUTAGE)
        relay.restore()
        assert client.post(f"{proxy.url}/payments", json={}, headers=key()).status_code == 201
        recovered = proxy.stderr.line(proxy.stderr.wait_for(RECOVERY))
        assert "3 requests got 503" in recovered
        assert "INFO retrysafe.proxy" in recovered
        lines = proxy.stop()
    finally:
        stop_proxies(started)
        relay.cut()
        delete_redis_prefix(redis_url, prefix)
    assert sum(OUTAGE in line for line in lines) == 1, lines
    assert sum(RECOVERY in line for line in lines) == 1, lines
    assert not [line for line in lines if "Traceback" in line]


def _proxy_run(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    """Run `retrysafe proxy args...` to its end (it fails at once); return what it did."""
    command = proxy_command(*args)
    command[2] = prelude + command[2]
    return subprocess.run(command, capture_output=True, text=True, timeout=_RUN, check=False)


def test_metrics_port_without_the_prometheus_extra_is_one_line(upstream: Upstream) -> None:
    """`--metrics-port` without prometheus-client: exit 2 and one line naming the extra."""
    blocked = "import sys; sys.modules['prometheus_client'] = None; "
    args = ["--upstream", upstream.url, "--store", "memory://", "--metrics-port", "9"]
    result = _proxy_run(*args, prelude=blocked)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert "pip install 'retrysafe[prometheus]'" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_port_0_binds_free_ports_and_the_first_line_names_them(
    upstream: Upstream, recorder: Recorder, host: str
) -> None:
    """`--port 0 --metrics-port 0`: each binds a free port of its own, and the line the proxy
    prints at start names the ports it bound (an IPv6 host in brackets), which then answer."""
    args = ["--upstream", upstream.url, "--store", "memory://", "--metrics-port", "0"]
    started = start_proxies([([*args, "--host", host], None)])
    try:
        proxy = started[0]
        shown = f"[{host}]" if ":" in host else host
        assert proxy.url.startswith(f"http://{shown}:"), proxy.url
        assert proxy.metrics is not None
        assert proxy.metrics.startswith(f"http://{shown}:")
        ports = {int(url.rsplit(":", 1)[1]) for url in (proxy.url, proxy.metrics)}
        assert len(ports) == 2, ports
        assert 0 not in ports
        with httpx.Client(timeout=_WAIT, trust_env=False, headers=CALLER) as client:
            payment = client.post(f"{proxy.url}/payments", json={}, headers=key())
            assert payment.status_code == 201, payment.text
            assert client.get(f"{proxy.metrics}/healthz").status_code == 200
        assert recorder.calls["/payments"] == 1
    finally:
        stop_proxies(started)


def test_metrics_port_in_use_is_one_line(upstream: Upstream) -> None:
    """A metrics port that is taken, or the proxied port itself: one line, a non-zero exit,
    before anything is served."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        args = ["--upstream", upstream.url, "--store", "memory://", "--metrics-port", port]
        result = _proxy_run(*args, "--port", "0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: --metrics-port: cannot listen on 127.0.0.1:")
    assert result.stderr.count("\n") == 1
    same = _proxy_run(*args, "--port", port)
    assert same.returncode == 2, same.stderr
    assert "is the proxied --port" in same.stderr


@pytest.mark.anyio
async def test_access_log_escapes_what_the_client_chose(caplog: pytest.LogCaptureFixture) -> None:
    """A path or method holding control or bidi characters (possible under another server
    than the proxy's h11, which refuses them) is logged with them as escapes."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    scope = {
        "type": "http",
        "method": "GET\r",
        "path": "/a\x1b[2J\u202e",
        "raw_path": "/a\x1b[2J\u202e".encode(),
        "headers": [],
        "client": ("127.0.0.1", 1),
    }
    with caplog.at_level(logging.INFO, "retrysafe.proxy.access"):
        await AccessLog(app)(scope, receive, send)
    [record] = caplog.records
    assert record.getMessage().startswith("127.0.0.1 GET\\r /a\\x1b[2J\\u202e 204 - ")


def test_a_flapping_store_logs_at_most_one_outage_per_hold(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Store calls that fail and answer in turn (a memory store at its cap fails new keys and
    answers replays) log an outage and its recovery, then nothing until `hold` has passed;
    a fencing is no outage."""
    now = [0.0]
    watch = StoreWatch(open_async_store("memory://"), hold=60, clock=lambda: now[0])
    failed = StoreCall("claim", 0, 0.001, StoreUnavailableError("full"))
    answered = StoreCall("claim", 0, 0.001)
    refused = Operation("proxy", decision="unavailable")
    with caplog.at_level(logging.INFO, "retrysafe.proxy"):
        watch.store_call(None, StoreCall("complete", 0, 0.001, FencedError("taken over")))
        for second in (1.0, 2.0, 30.0, 61.5):
            now[0] = second
            watch.store_call(None, failed)
            watch.decided(refused)
            watch.store_call(None, answered)
    assert [(r.levelname, r.getMessage()[:35]) for r in caplog.records] == [
        ("WARNING", "The idempotency store is failing (S"),
        ("INFO", "The idempotency store answers again"),
        ("WARNING", "The idempotency store is failing (S"),
        ("INFO", "The idempotency store answers again"),
    ]
    assert "1 request got 503" in caplog.records[-1].getMessage()


@pytest.mark.anyio
async def test_access_log_clips_a_long_path(caplog: pytest.LogCaptureFixture) -> None:
    """A path of 16,000 characters (a target the proxy refuses with 414 is logged too) is
    written up to 1,024 characters, with how many more there were; a short one whole."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 414, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    for path in ("/" + "a" * 15_999, "/" + "b" * 1023):
        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "headers": [], "client": ("127.0.0.1", 1)}  # fmt: skip
        with caplog.at_level(logging.INFO, "retrysafe.proxy.access"):
            await AccessLog(app)(scope, receive, send)
    long, short = (record.getMessage() for record in caplog.records)
    assert long.startswith(f"127.0.0.1 GET /{'a' * 1023}...[14976 more characters] 414 - ")
    assert short.startswith(f"127.0.0.1 GET /{'b' * 1023} 414 - ")
