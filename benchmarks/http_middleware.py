"""HTTP throughput and latency: a bare FastAPI app against the middleware on every store.

    .venv/bin/python benchmarks/http_middleware.py [--duration 5] [--rounds 3] [--connections 16]
        [--variants bare,memory,...] [--scenarios first,replay,nokey,get] [--json out.json]
        [--profile VARIANT/SCENARIO]

One FastAPI endpoint (`POST /payments`, a pydantic body, 201 JSON; `GET /payments`) is served
by uvicorn with one worker, once bare and once per variant: retrysafe's middleware on memory,
SQLite, Redis and PostgreSQL, idemkit (the strongest Python peer) on the same Redis and
PostgreSQL, and fastapi-idempotency-key (`fik-`) in memory and on SQLite. wrk, in its own
process, loads each with `--connections` connections:

- first:  a new Idempotency-Key on every request (claim, run, complete);
- replay: keys completed beforehand (a stored outcome answers);
- nokey:  POST without a key; get: GET, a method the middleware does not cover.

Variants alternate within each round (reversed every other round) and rounds repeat, since the
machine is noisy. Each ratio is taken against the bare app in the same round, and the median
over rounds is reported, with the median throughput and latency percentiles.

Every server runs from `benchmarks/.venv-peers`, which this script makes on its first run:
uvicorn with uvloop and httptools, FastAPI and pydantic at the versions in the project's
environment, idemkit, fastapi-idempotency-key, py-spy, and this checkout of retrysafe
(editable). So all variants run on one stack, and no peer becomes a retrysafe dependency. Needs
wrk (`apt-get install -y wrk`), and PostgreSQL and Redis at RETRYSAFE_TEST_POSTGRES_URL /
RETRYSAFE_TEST_REDIS_URL (default: loopback); what the run creates there is removed at the end.

`--profile memory/first` also samples that server with py-spy during its first measured run and
prints where its time goes.
"""

from __future__ import annotations

# Servers import their stack lazily; wrk, py-spy and the servers are run as subprocesses.
# ruff: noqa: PLC0415, S603
import os
import sys

# Run as a script, this file's folder comes first on sys.path, and this file would stand in
# for the standard library's `http` package in every module that imports it.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import json
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEERS = HERE / ".venv-peers"
LUA = HERE / "http_middleware.lua"
POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
VARIANTS = [
    "bare",
    "memory",
    "sqlite",
    "redis",
    "postgres",
    "idemkit-redis",
    "idemkit-postgres",
    "fik-memory",
    "fik-sqlite",
]
# Not in the default run: SQLite with synchronous=normal (no fsync per commit in WAL mode);
# memory and Redis with observers as in production: `-prometheus` the Prometheus observer,
# `-observed` that and OpenTelemetry with the SDK sampling 1% of traces (exporting nowhere).
EXTRA_VARIANTS = [
    "sqlite-normal",
    "memory-prometheus",
    "memory-observed",
    "redis-prometheus",
    "redis-observed",
    "bare-frozen",
    "memory-frozen",
    "redis-frozen",
    "sqlite-frozen",
    "sqlite-normal-frozen",
    "postgres-frozen",
    "sqlite-cached",
    "redis-cached",
    "postgres-cached",
]
# `-cached`: the store URL with `replay_cache=10000` (completed records kept in memory).
# `-frozen`: the same app, with `gc.freeze()` once it is built (docs/benchmarks.md, gc pauses).
SCENARIOS = ["first", "replay", "nokey", "get"]
REPLAY_KEYS = 100
REPLAY_HEADERS = ("idempotent-replayed", "idempotency-replayed")  # retrysafe; idemkit, fik
BODY = b'{"customer":"cus_42","amount":1250,"currency":"EUR"}'
# The targets, as ratios to the bare app in the same round (retrysafe variants only).
# Issue 15's targets. Against the bare app in the same round: replays at least as fast, and
# requests without a key (or not covered) at 0.97. Against the peer on the same store, first-time.
TARGETS: dict[tuple[str, str], float] = {
    **{("replay", v): 1.0 for v in ("memory", "sqlite", "redis", "postgres")},
    **{(s, v): 0.97 for s in ("nokey", "get") for v in ("memory", "sqlite", "redis", "postgres")},
}
PEERS_OF = {
    "memory": "fik-memory",
    "sqlite": "fik-sqlite",
    "redis": "idemkit-redis",
    "postgres": "idemkit-postgres",
}
PEER_TARGETS: dict[tuple[str, str], float] = {
    ("first", "memory"): 1.0,
    ("first", "sqlite"): 1.5,
    ("first", "redis"): 1.3,
    ("first", "postgres"): 1.3,
}
# First-time: app CPU added per request (µs) at most, and p99 at most this many times bare's.
CPU_TARGETS = {"memory": 35.0, "sqlite": 250.0, "redis": 150.0, "postgres": 250.0}
P99_TARGETS = {"memory": 2.0, "sqlite": 2.0, "redis": 3.0, "postgres": 3.0}


class Payment(BaseModel):
    """The body of `POST /payments`."""

    customer: str
    amount: int
    currency: str


def peer_requirements() -> list[str]:
    """Return what the benchmark environment holds besides retrysafe itself."""
    return [
        f"fastapi=={version('fastapi')}",
        f"pydantic=={version('pydantic')}",
        f"uvicorn[standard]=={version('uvicorn')}",
        f"opentelemetry-sdk=={version('opentelemetry-sdk')}",
        "idemkit[redis,postgres,asgi]==1.0.2",
        "fastapi-idempotency-key[sqlite]==0.1.1",
        "py-spy>=0.3",
    ]


def ensure_peers() -> Path:
    """Create `benchmarks/.venv-peers` if it is missing or stale; return its python."""
    python = PEERS / "bin" / "python"
    wanted = "\n".join([f"-e {ROOT}[redis,postgres,prometheus,otel]", *peer_requirements()])
    marker = PEERS / "requirements.txt"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"Setting up {PEERS.relative_to(ROOT)} (once): {', '.join(peer_requirements())}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS)], check=True)
    (PEERS / ".gitignore").write_text(
        "# Made by benchmarks/http_middleware.py; not committed.\n*\n"
    )
    marker.write_text(wanted)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", marker],
        check=True,
    )
    return python


def require_wrk() -> str:
    """Return the path of wrk, or exit saying how to install it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(
            "benchmarks/http_middleware.py needs wrk, the HTTP load generator. Install it with\n"
            "    apt-get install -y wrk      (Debian, Ubuntu)\n"
            "    brew install wrk           (macOS)\n"
            "and run this command again."
        )
    return wrk


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The server side: runs in the benchmark environment (`http_middleware.py serve VARIANT ...`).


def build_app(variant: str, store: str) -> Any:
    """Return the FastAPI app of `variant`, with `store` (a URL or a name) where it needs one."""
    from fastapi import FastAPI

    app = FastAPI()
    created = Counter[str]()

    @app.post("/payments", status_code=201)
    async def create_payment(payment: Payment) -> dict[str, Any]:
        created["n"] += 1
        return {"id": f"pay_{created['n']}", **payment.model_dump(), "status": "succeeded"}

    @app.get("/payments")
    async def list_payments() -> dict[str, Any]:
        return {"payments": []}

    if variant in ("bare", "bare-frozen"):
        return app
    if variant.startswith("idemkit-"):
        import idemkit

        backend: Any
        if variant == "idemkit-redis":
            backend = idemkit.RedisBackend.from_url(REDIS_URL, namespace=store)
        else:
            backend = idemkit.PostgresBackend.from_url(POSTGRES_URL, table=store)
        # The same scope rule as retrysafe's default: the Authorization header.
        config = idemkit.HttpConfig(
            scope=lambda request: request.headers.get("authorization") or "anonymous"
        )
        app.add_middleware(idemkit.IdempotencyMiddleware, backend=backend, config=config)
        return app
    if variant.startswith("fik-"):
        import fastapi_idempotency_key as fik

        peer_backend: Any = fik.MemoryBackend()
        if variant == "fik-sqlite":
            peer_backend = fik.SQLiteBackend(store)
        app.add_middleware(fik.IdempotencyMiddleware, backend=peer_backend)
        return app
    from retrysafe import open_async_store
    from retrysafe.asgi import IdempotencyMiddleware

    observers = observers_of_benchmark(variant)
    app.add_middleware(IdempotencyMiddleware, store=open_async_store(store), observers=observers)
    return app


def observers_of_benchmark(variant: str) -> list[Any]:
    """Return the observers of `variant`, set up as in production but exporting nowhere."""
    if not variant.endswith(("-prometheus", "-observed")):
        return []
    from retrysafe.observe.prometheus import PrometheusObserver

    if variant.endswith("-prometheus"):
        return [PrometheusObserver()]
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from retrysafe.observe.otel import OpenTelemetryObserver

    class Nowhere(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(BatchSpanProcessor(Nowhere()))
    return [PrometheusObserver(), OpenTelemetryObserver(tracer_provider=provider)]


def serve(variant: str, port: int, store: str, gc_threshold: int | None = None) -> None:
    """Serve `variant` with uvicorn (one worker, uvloop, httptools) until terminated; with
    `gc_threshold`, the collector's first threshold set to it (`gc.set_threshold`)."""
    import gc

    import uvicorn

    if variant == "idemkit-postgres":
        import asyncio

        from idemkit.backends.postgres import init_pg

        asyncio.run(init_pg(POSTGRES_URL, table=store))
    app = build_app(variant, store)
    if gc_threshold is not None:
        gc.set_threshold(gc_threshold)
    if variant.endswith("-frozen"):
        gc.collect()
        gc.freeze()  # what start-up made lives as long as the process: out of every collection
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# ---------------------------------------------------------------------------------------------
# The driver side.


@dataclass
class Server:
    """A variant's server process."""

    variant: str
    port: int
    store: str
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Sample:
    """One wrk run."""

    throughput: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float  # the server process's CPU time (user + system) per request


@dataclass
class Results:
    """Every sample, by (scenario, variant), in round order."""

    samples: dict[tuple[str, str], list[Sample]] = field(default_factory=dict)

    def add(self, scenario: str, variant: str, sample: Sample) -> None:
        """Record a sample."""
        self.samples.setdefault((scenario, variant), []).append(sample)


def store_of(variant: str, name: str, workdir: Path) -> str:
    """Return the store URL (retrysafe) or table/namespace (idemkit) of `variant`."""
    return {
        "bare": "",
        "memory": "memory://",
        "sqlite": f"sqlite:///{workdir / 'retrysafe.db'}",
        "sqlite-normal": f"sqlite:///{workdir / 'normal.db'}?synchronous=normal",
        "redis": f"{REDIS_URL}?prefix={name}",
        "memory-prometheus": "memory://",
        "memory-observed": "memory://",
        "memory-frozen": "memory://",
        "sqlite-frozen": f"sqlite:///{workdir / 'frozen.db'}",
        "sqlite-normal-frozen": f"sqlite:///{workdir / 'normal-frozen.db'}?synchronous=normal",
        "sqlite-cached": f"sqlite:///{workdir / 'cached.db'}?replay_cache=10000",
        "redis-cached": f"{REDIS_URL}?prefix={name}c&replay_cache=10000",
        "postgres-cached": f"{POSTGRES_URL}?table={name}_c&replay_cache=10000",
        "redis-frozen": f"{REDIS_URL}?prefix={name}f",
        "bare-frozen": "",
        "postgres-frozen": f"{POSTGRES_URL}?table={name}_f",
        "redis-prometheus": f"{REDIS_URL}?prefix={name}p",
        "redis-observed": f"{REDIS_URL}?prefix={name}o",
        "postgres": f"{POSTGRES_URL}?table={name}",
        "idemkit-redis": f"{name}_ik",
        "idemkit-postgres": f"{name}_ik",
        "fik-memory": "",
        "fik-sqlite": str(workdir / "fik.db"),
    }[variant]


def pinned(command: list[str], core: int | None) -> list[str]:
    """Return `command` run on CPU `core` alone, every thread of it (with taskset), or as it is
    (`core` None)."""
    return command if core is None else ["taskset", "-c", str(core), *command]


def start_servers(
    python: Path,
    variants: list[str],
    name: str,
    workdir: Path,
    *,
    core: int | None = None,
    gc_threshold: int | None = None,
) -> list[Server]:
    """Start every variant's server at once (on CPU `core`, if given; with the collector's
    first threshold at `gc_threshold`, if given); wait until each answers."""
    import httpx

    servers = []
    for variant in variants:
        port = free_port()
        store = store_of(variant, name, workdir)
        command = [str(python), __file__, "serve", variant, "--port", str(port), "--store", store]
        if gc_threshold is not None:
            command += ["--gc-threshold", str(gc_threshold)]
        servers.append(Server(variant, port, store, subprocess.Popen(pinned(command, core))))
    deadline = time.monotonic() + 60
    for server in servers:
        while True:
            if server.process.poll() is not None:
                raise SystemExit(f"the {server.variant} server exited")
            try:
                if httpx.get(f"{server.url}/payments", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the {server.variant} server did not start")
            time.sleep(0.1)
    return servers


def prepare_replays(server: Server, run: str) -> None:
    """Complete the keys the replay scenario uses, and check that they replay."""
    import httpx

    # A credential on every request: keyed requests need a caller to be scoped to (B8).
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=10) as client:
        for index in range(REPLAY_KEYS):
            key = {"Idempotency-Key": f"{run}-replay-{index}"}
            response = client.post("/payments", content=BODY, headers=key)
            if response.status_code != 201:
                raise SystemExit(f"{server.variant}: {response.status_code} {response.text}")
        replay = client.post(
            "/payments", content=BODY, headers={"Idempotency-Key": f"{run}-replay-0"}
        )
        marked = any(name.lower() in REPLAY_HEADERS for name in replay.headers)
        if not server.variant.startswith("bare") and not marked:
            raise SystemExit(f"{server.variant} did not replay: {dict(replay.headers)}")


def run_wrk(
    wrk: str,
    server: Server,
    scenario: str,
    run: str,
    *,
    duration: float,
    connections: int,
    core: int | None = None,
) -> Sample:
    """Load `server` with `scenario` for `duration` seconds (wrk on CPU `core`, if given);
    return what wrk measured."""
    env = {
        **os.environ,
        "BENCH_MODE": scenario,
        "BENCH_RUN": f"{run}-{secrets.token_hex(3)}" if scenario == "first" else run,
        "BENCH_REPLAY_KEYS": str(REPLAY_KEYS),
    }
    command = [
        wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
        "-s", str(LUA), server.url,
    ]  # fmt: skip
    cpu_before = cpu_seconds(server.process.pid)
    output = subprocess.run(
        pinned(command, core), env=env, capture_output=True, text=True, check=True
    ).stdout
    cpu = cpu_seconds(server.process.pid) - cpu_before
    data = json.loads(output.strip().splitlines()[-1])
    return Sample(
        throughput=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=data["status_errors"] + data["socket_errors"],
        cpu_us=cpu / max(data["requests"], 1) * 1e6,
    )


def cpu_seconds(pid: int) -> float:
    """Return the CPU time (user + system) process `pid` has used, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")  # no /proc: the CPU column shows nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profile(python: Path, wrk: str, server: Server, scenario: str, *, run: str, args: Any) -> None:
    """Sample `server` with py-spy under `scenario` load; print the hottest functions."""
    py_spy = python.parent / "py-spy"
    with tempfile.NamedTemporaryFile(suffix=".txt") as raw:
        recorder = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(server.process.pid), "--format", "raw",
             "--rate", "200", "--nonblocking", "--output", raw.name,
             "--duration", str(int(args.duration))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        run_wrk(
            wrk, server, scenario, run,
            duration=args.duration, connections=args.connections, core=args.wrk_core,
        )  # fmt: skip
        recorder.wait(60)
        stacks = Path(raw.name).read_text().splitlines()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in stacks:
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")]  # fmt: skip
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    print(f"\nWhere {server.variant} spends its time under '{scenario}' ({total} samples):")
    print("  inclusive  function")
    for frame, count in inclusive.most_common(40):
        print(f"  {100 * count / total:8.1f}%  {frame}")
    print("  self       function")
    for frame, count in own.most_common(15):
        print(f"  {100 * count / total:8.1f}%  {frame}")


def cleanup(servers: list[Server], name: str) -> None:
    """Stop the servers, then drop the tables and keys this run made."""
    for server in servers:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.process.wait(15)
        except subprocess.TimeoutExpired:
            server.process.kill()
    import psycopg
    import redis

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for table in (name, f"{name}_ik", f"{name}_c", f"{name}_f"):
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')  # type: ignore[arg-type]
    client = redis.Redis.from_url(REDIS_URL)
    for pattern in (f"{name}*", f"*{name}_ik*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.delete(key)
    client.close()


def report(results: Results, scenarios: list[str], variants: list[str]) -> list[dict[str, Any]]:
    """Print the results as Markdown tables; return them as rows.

    Ratios are medians over rounds of the ratio within each round: to the bare app (`x bare`),
    and for retrysafe on a store with a peer in the run, to that peer (`x peer`). CPU is the
    server process's per request, and what it adds to the bare app's in the same round.
    """
    rows = []
    titles = {
        "first": "First-time requests (a new key each)",
        "replay": "Replays (completed keys)",
        "nokey": "POST without a key",
        "get": "GET (a method not covered)",
    }
    for scenario in scenarios:
        bare = results.samples.get((scenario, "bare"), [])
        print(f"\n**{titles[scenario]}**\n")
        print(
            "| variant | req/s | x bare | x peer | p50 ms | p99 ms | CPU µs/req | added "
            "| target | errors |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|")
        for variant in variants:
            samples = results.samples.get((scenario, variant), [])
            if not samples:
                continue
            peer = results.samples.get((scenario, PEERS_OF.get(variant, "")), [])
            row = {
                "scenario": scenario,
                "variant": variant,
                "throughput": statistics.median(s.throughput for s in samples),
                "ratio": None if variant == "bare" else _ratio(samples, bare),
                "peer_ratio": _ratio(samples, peer),
                "p50_ms": statistics.median(s.p50_ms for s in samples),
                "p99_ms": statistics.median(s.p99_ms for s in samples),
                "cpu_us": statistics.median(s.cpu_us for s in samples),
                "cpu_added_us": statistics.median(
                    s.cpu_us - b.cpu_us for s, b in zip(samples, bare, strict=False)
                )
                if bare
                else None,
                "p99_x_bare": statistics.median(
                    s.p99_ms / b.p99_ms for s, b in zip(samples, bare, strict=False)
                )
                if bare
                else None,
                "errors": sum(s.errors for s in samples),
                "rounds": [round(s.throughput) for s in samples],
            }
            rows.append(row)
            print(
                f"| {variant} | {row['throughput']:,.0f} | {_shown(row['ratio'], variant)} "
                f"| {_shown(row['peer_ratio'])} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
                f"| {row['cpu_us']:.0f} | {_shown(row['cpu_added_us'], digits=0)} "
                f"| {_verdict(scenario, variant, row)} | {row['errors']} |"
            )
    return rows


def _ratio(samples: list[Sample], bases: list[Sample]) -> float | None:
    ratios = [s.throughput / b.throughput for s, b in zip(samples, bases, strict=False)]
    return statistics.median(ratios) if ratios else None


def _shown(value: float | None, variant: str = "", *, digits: int = 2) -> str:
    if variant == "bare":
        return "1.00"
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(scenario: str, variant: str, row: dict[str, Any]) -> str:
    """Say whether the row meets issue 15's target for it, if it has one."""
    verdicts = []
    for target, value, unit in (
        (TARGETS.get((scenario, variant)), row["ratio"], "x bare"),
        (PEER_TARGETS.get((scenario, variant)), row["peer_ratio"], "x peer"),
    ):
        if target is not None and value is not None:
            met = "ok" if value >= target else "**missed**"
            verdicts.append(f">= {target:.2f} {unit} {met}")
    if scenario == "first" and variant in CPU_TARGETS and row["cpu_added_us"] is not None:
        cpu = CPU_TARGETS[variant]
        met = "ok" if row["cpu_added_us"] <= cpu else "**missed**"
        verdicts.append(f"CPU <= +{cpu:.0f} µs {met}")
    if scenario == "first" and variant in P99_TARGETS and row["p99_x_bare"] is not None:
        times = P99_TARGETS[variant]
        met = "ok" if row["p99_x_bare"] <= times else "**missed**"
        verdicts.append(f"p99 <= {times:.0f}x bare {met}")
    return "; ".join(verdicts)


def serve_main() -> None:
    """Serve one variant, as `start_servers` asks (`serve VARIANT --port ...`)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("serve")
    parser.add_argument("variant", choices=VARIANTS + EXTRA_VARIANTS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default="")
    parser.add_argument("--gc-threshold", type=int)
    args = parser.parse_args()
    serve(args.variant, args.port, args.store, args.gc_threshold)


def main() -> None:
    """Run the benchmark (or, with `serve`, one server)."""
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve_main()
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--profile", metavar="VARIANT/SCENARIO", action="append", default=[])
    parser.add_argument(
        "--pin",
        action="store_true",
        help="every server on CPU 0, wrk on CPU 1 (the stores' servers are left where they run)",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        metavar="N",
        help="every server's first garbage-collector threshold (gc.set_threshold(N); 700 default)",
    )
    args = parser.parse_args()
    args.server_core, args.wrk_core = (0, 1) if args.pin else (None, None)
    wrk = require_wrk()
    variants = ["bare", *(v for v in args.variants.split(",") if v != "bare")]
    scenarios = args.scenarios.split(",")
    unknown = set(variants) - set(VARIANTS + EXTRA_VARIANTS) | set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown variants or scenarios: {sorted(unknown)}")
    python = ensure_peers()
    name = f"bench_http_{secrets.token_hex(4)}"
    run = secrets.token_hex(4)
    results = Results()
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(
            python, variants, name, Path(tmp), core=args.server_core, gc_threshold=args.gc_threshold
        )
        try:
            by_variant = {server.variant: server for server in servers}
            for server in servers:
                prepare_replays(server, run)
            print(
                f"wrk -t1 -c{args.connections} -d{args.duration:g}s, {args.rounds} rounds, "
                f"uvicorn 1 worker (uvloop, httptools); {os.cpu_count()} CPUs"
                f"{'; servers on CPU 0, wrk on CPU 1' if args.pin else ''}",
                flush=True,
            )
            for scenario in scenarios:  # warm up every server on every path
                for server in servers:
                    run_wrk(
                        wrk, server, scenario, run,
                        duration=1, connections=args.connections, core=args.wrk_core,
                    )  # fmt: skip
            for round_index in range(args.rounds):
                order = variants if round_index % 2 == 0 else variants[::-1]
                for scenario in scenarios:
                    for variant in order:
                        sample = run_wrk(
                            wrk, by_variant[variant], scenario, run,
                            duration=args.duration, connections=args.connections,
                            core=args.wrk_core,
                        )  # fmt: skip
                        results.add(scenario, variant, sample)
                        print(
                            f"  round {round_index + 1} {scenario:6} {variant:16} "
                            f"{sample.throughput:8,.0f} req/s  p99 {sample.p99_ms:6.2f} ms",
                            flush=True,
                        )
            for target in args.profile:
                variant, _, scenario = target.partition("/")
                profile(python, wrk, by_variant[variant], scenario or "first", run=run, args=args)
        finally:
            cleanup(servers, name)
    rows = report(results, scenarios, variants)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
