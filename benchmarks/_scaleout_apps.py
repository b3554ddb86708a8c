"""The scale-out apps: N uvicorn processes behind retrysafe's middleware on one shared store.

    python -m benchmarks._scaleout_apps serve --port P --sink URL --run NAME --instance I
        [--store URL]

Shared by `benchmarks/scaleout.py` and `tests/test_scaleout.py`. Each instance is a Starlette
app whose `POST /effects` performs one effect per execution, counted durably and exactly in an
effect sink outside the app: one row in a PostgreSQL table `scaleout_effects_<run>(key text,
instance int)` (no unique constraint, so a double execution is two rows), or one `HINCRBY` on
a Redis hash `scaleout_effects_<run>` (field: the key). After a run, `EffectSink.counts()` says
how many times each key's effect ran. Without `--store` the same app runs bare (the baseline).
`GET /stats` answers what the middleware decided in this process (a counting observer).
"""

from __future__ import annotations

# The instances are subprocesses; their stack is imported where it runs.
# ruff: noqa: PLC0415, S603
import argparse
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SCOPE_HEADER = "Bearer scaleout"  # every request's caller: keys are scoped per caller (B8)
_START_SECONDS = 60.0


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_url(url: str) -> str:
    """Return `url` without its query string (not by urlunsplit: sqlite:///x would lose a /)."""
    return url.split("?", 1)[0]


def store_url_for_run(url: str, name: str, workdir: Path) -> str:
    """Return `url` with a table or key prefix of its own for this run, so runs never meet.

    `postgres`, `redis`, `redis-cluster` and `sqlite` name the usual test servers (the
    RETRYSAFE_TEST_*_URL variables) and a file in `workdir`; anything else is a store URL.
    """
    named = {
        "postgres": os.environ.get("RETRYSAFE_TEST_POSTGRES_URL"),
        "redis": os.environ.get("RETRYSAFE_TEST_REDIS_URL"),
        "redis-cluster": os.environ.get("RETRYSAFE_TEST_REDIS_CLUSTER_URL"),
        "sqlite": f"sqlite:///{workdir / 'scaleout.db'}",
    }
    if url in named:
        found = named[url]
        if not found:
            raise SystemExit(f"no URL for the {url} store: set its RETRYSAFE_TEST_*_URL")
        url = found
    scheme = urlsplit(url).scheme
    option = "table" if scheme.startswith(("postgres", "sqlite")) else "prefix"
    if scheme.startswith("memory"):
        raise SystemExit("memory:// is private to one process: scale-out needs a shared store")
    return f"{url}{'&' if '?' in url else '?'}{option}={name}"


def default_sink_for(store_url: str) -> str:
    """Return where effects are counted for `store_url`: its own server when it is PostgreSQL or
    a single Redis, else the test Redis (a cluster or a SQLite store have no sink of their own)."""
    scheme = urlsplit(store_url).scheme
    if scheme.startswith("postgres") or scheme in ("redis", "rediss"):
        return base_url(store_url)
    return os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# ---------------------------------------------------------------------------------------------
# The effect sink: the app records, the driver counts and drops.


@dataclass
class EffectSink:
    """Where each execution's effect is recorded, one row or one increment per execution."""

    url: str
    run: str

    @property
    def is_postgres(self) -> bool:
        """Whether the sink is a PostgreSQL table (else a Redis hash)."""
        return urlsplit(self.url).scheme.startswith("postgres")

    @property
    def name(self) -> str:
        """The table or hash name, fresh per run."""
        return f"scaleout_effects_{self.run}"

    def create(self) -> None:
        """Create the sink's table (PostgreSQL; a Redis hash needs nothing)."""
        if self.is_postgres:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f'CREATE TABLE "{self.name}" (key text NOT NULL, instance int)')  # type: ignore[arg-type]

    def counts(self) -> Counter[str]:
        """Return how many times each key's effect ran."""
        if self.is_postgres:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                rows = conn.execute(f'SELECT key, count(*) FROM "{self.name}" GROUP BY key')  # type: ignore[arg-type]
                return Counter({key: int(n) for key, n in rows})
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            found = client.hgetall(self.name)
        finally:
            client.close()
        return Counter({key.decode(): int(n) for key, n in found.items()})

    def drop(self) -> None:
        """Remove what the sink holds."""
        if self.is_postgres:
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{self.name}"')  # type: ignore[arg-type]
            return
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.delete(self.name)
        finally:
            client.close()

    @contextlib.asynccontextmanager
    async def recorder(self, instance: int) -> AsyncIterator[Any]:
        """Yield an async function of a key that records one execution of its effect."""
        if self.is_postgres:
            from psycopg_pool import AsyncConnectionPool

            insert = f'INSERT INTO "{self.name}" (key, instance) VALUES (%s, %s)'
            pool = AsyncConnectionPool(
                self.url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=False
            )
            await pool.open()

            async def record_row(key: str) -> None:
                async with pool.connection() as conn:
                    await conn.execute(insert, (key, instance))  # type: ignore[arg-type]

            try:
                yield record_row
            finally:
                await pool.close()
            return
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(self.url)

        async def record_increment(key: str) -> None:
            await client.hincrby(self.name, key, 1)

        try:
            yield record_increment
        finally:
            await client.aclose()


# ---------------------------------------------------------------------------------------------
# The app, in its own process.


def build_app(store_url: str | None, sink: EffectSink, instance: int) -> Any:
    """Return the instance's ASGI app: bare when `store_url` is None."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from retrysafe.observe import Observer, Operation, StoreCall

    decisions: Counter[str] = Counter()

    class Counting(Observer):
        def decided(self, operation: Operation) -> None:
            decisions[operation.decision or "none"] += 1

        def store_call(self, operation: Operation | None, call: StoreCall) -> None:
            decisions[f"store_{call.name}"] += 1

        def waited(self, operation: Operation | None, call: StoreCall) -> None:
            decisions["waited"] += 1

    executions = itertools.count(1)
    recorder: list[Any] = []

    async def effect(request: Request) -> Response:
        payment = json.loads(await request.body())
        key = request.headers.get("idempotency-key", "")
        await recorder[0](key)
        answer = {
            "id": f"pay_{instance}_{os.getpid()}_{next(executions)}",
            "key": key,
            **payment,
            "status": "succeeded",
            "instance": instance,
            "created_at": round(time.time(), 6),
        }
        return JSONResponse(answer, status_code=201)

    async def stats(request: Request) -> Response:
        return JSONResponse({"instance": instance, "pid": os.getpid(), **decisions})

    store = None
    if store_url is not None:
        from retrysafe import open_async_store

        store = open_async_store(store_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with sink.recorder(instance) as record:
            recorder.append(record)
            yield
        if store is not None:
            await store.aclose()

    routes = [Route("/effects", effect, methods=["POST"]), Route("/stats", stats)]
    app = Starlette(routes=routes, lifespan=lifespan)
    if store is None:
        return app
    from retrysafe.asgi import IdempotencyMiddleware

    return IdempotencyMiddleware(app, store=store, observers=[Counting()])


def serve(args: argparse.Namespace) -> None:
    """Serve one instance with uvicorn (one worker) until terminated."""
    import gc

    import uvicorn

    app = build_app(args.store or None, EffectSink(args.sink, args.run), args.instance)
    gc.collect()
    gc.freeze()  # what start-up made lives as long as the process (docs/http.md, Deploying)
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
        lifespan="on", timeout_graceful_shutdown=5,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The driver side: a group of instances on one store and one sink.


@dataclass
class Instances:
    """N app processes on one store (or bare) and one effect sink."""

    store_url: str | None
    sink: EffectSink
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def stats(self) -> list[dict[str, Any]]:
        """Return each instance's `GET /stats`."""
        return [_get_json(port, "/stats") for port in self.ports]

    @property
    def pids(self) -> list[int]:
        """The instances' process ids."""
        return [process.pid for process in self.processes]


@contextlib.contextmanager
def instances(store_url: str | None, sink: EffectSink, count: int) -> Iterator[Instances]:
    """Start `count` instances on `store_url` (None: bare), wait until each answers, and stop
    them (SIGTERM, so the middleware drains) on the way out."""
    group = Instances(store_url, sink)
    try:
        for index in range(count):
            port = free_port()
            command = [
                sys.executable, "-m", "benchmarks._scaleout_apps", "serve", "--port", str(port),
                "--sink", sink.url, "--run", sink.run, "--instance", str(index),
                *(["--store", store_url] if store_url else []),
            ]  # fmt: skip
            group.processes.append(subprocess.Popen(command, cwd=ROOT))
            group.ports.append(port)
        deadline = time.monotonic() + _START_SECONDS
        for port, process in zip(group.ports, group.processes, strict=True):
            _wait_until_up(port, process, deadline)
        yield group
    finally:
        for process in group.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in group.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _wait_until_up(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the instance on port {port} exited ({process.returncode})")
        with contextlib.suppress(OSError, ValueError):
            _get_json(port, "/stats")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the instance on port {port} did not start")
        time.sleep(0.1)


def _get_json(port: int, path: str) -> dict[str, Any]:
    """GET `path` from a loopback port with the standard library; return its JSON."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ValueError(head[:40])
    result: dict[str, Any] = json.loads(body)
    return result


def drop_store(store_url: str) -> None:
    """Remove the table or the key prefix a run's store used."""
    parts = urlsplit(store_url)
    options = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    if parts.scheme.startswith("postgres"):
        import psycopg

        with psycopg.connect(base_url(store_url), autocommit=True) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{options["table"]}"')  # type: ignore[arg-type]
    elif parts.scheme in ("redis", "rediss"):
        import redis

        client = redis.Redis.from_url(base_url(store_url))
        try:
            for key in client.scan_iter(match=f"{options['prefix']}*", count=1000):
                client.delete(key)
        finally:
            client.close()
    elif "cluster" in parts.scheme:
        from redis.cluster import RedisCluster

        host, _, port = parts.netloc.rpartition("@")[2].split(",")[0].partition(":")
        cluster = RedisCluster(
            host=host, port=int(port or 6379), ssl=parts.scheme.startswith("rediss")
        )
        try:
            for key in cluster.scan_iter(match=f"{options['prefix']}*", count=1000):
                cluster.delete(key)
        finally:
            cluster.close()


def main() -> None:
    """`serve`: run one instance."""
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default="")
    parser.add_argument("--sink", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--instance", type=int, required=True)
    serve(parser.parse_args())


if __name__ == "__main__":
    main()
