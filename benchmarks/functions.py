"""Decorator throughput: a trivial `@idempotent` function, next to AWS Powertools on one Redis.

    .venv/bin/python benchmarks/functions.py [--calls 2000] [--rounds 3] [--backends ...]

For each store, in one run: calls per second of a trivial decorated function the first time a
key is seen (claim, run, store the result) and on a replay (claim finds the result), beside
the bare function and AWS Powertools' `idempotent_function` with its Redis persistence layer
(`CachePersistenceLayer`) on the same Redis server. One thread calls in a loop; variants
alternate within each round (retrysafe on Redis and Powertools back to back, first) and the
median of the rounds is kept, since the machine is noisy. Beside the rates, the CPU time the
process spent per call (user and system, from `getrusage`): it leaves out the waits for the
server and for a core, so it moves much less than the rates when the machine is shared.

Powertools is never a dependency of retrysafe: it lives in `benchmarks/.venv`, built from
`benchmarks/requirements-functions.txt` plus this checkout (editable). Run with any Python: the
script builds that environment on first use and re-runs itself there. Uses PostgreSQL and Redis
at RETRYSAFE_TEST_POSTGRES_URL / RETRYSAFE_TEST_REDIS_URL (default: loopback), with a fresh
table and key prefix that are deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = HERE / ".venv"
REQUIREMENTS = HERE / "requirements-functions.txt"
POSTGRES_URL = os.environ.get(
    "RETRYSAFE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("RETRYSAFE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def ensure_environment() -> None:
    """Re-run this script in benchmarks/.venv, building it first if it is missing or stale."""
    python = VENV / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    marker = VENV / ".installed-functions"
    if Path(sys.prefix).resolve() == VENV.resolve() and marker.exists():
        return
    if not marker.exists() or marker.read_text() != wanted:
        print(f"building {VENV.relative_to(ROOT)} (Powertools, retrysafe editable)", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)  # noqa: S603 - fixed argv
        subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
            check=True,
        )
        subprocess.run(  # noqa: S603 - a fixed argv, no shell
            [str(python), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[redis,postgres]"],
            check=True,
        )
        marker.write_text(wanted)
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])  # noqa: S606 - our own venv


ensure_environment()

# Only in benchmarks/.venv from here on.
import psycopg  # noqa: E402
import redis  # noqa: E402
from aws_lambda_powertools.utilities.idempotency import (  # noqa: E402
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    CachePersistenceLayer,
)

import retrysafe  # noqa: E402
from retrysafe._decorator import idempotent  # noqa: E402

Call = Callable[[dict[str, Any]], object]


def work(order: dict[str, Any]) -> dict[str, Any]:
    """The trivial function every variant wraps: the cost measured is the wrapping."""
    return {"order": order["id"], "status": "charged", "amount": order["amount"]}


@contextmanager
def retrysafe_variant(backend: str, workdir: Path, name: str) -> Iterator[Call]:
    """Yield `work` decorated with retrysafe on `backend`; delete its data afterwards."""
    if backend == "memory":
        url = "memory://"
    elif backend == "sqlite":
        url = f"sqlite:///{workdir / f'{name}.db'}"
    elif backend == "postgres":
        url = f"{POSTGRES_URL}?table={name}"
    elif backend == "redis":
        url = f"{REDIS_URL}?prefix={name}"
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    store = retrysafe.open_store(url)
    try:
        yield idempotent(store, key=lambda order: order["id"], namespace="bench.work")(work)
    finally:
        store.close()
        if backend == "postgres":
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
        elif backend == "redis":
            delete_prefix(name)


@contextmanager
def powertools_variant(name: str) -> Iterator[Call]:
    """Yield `work` decorated with Powertools' idempotent_function on the same Redis."""
    client = redis.Redis.from_url(REDIS_URL)
    with warnings.catch_warnings():
        # Its own deprecation notice, about the alias that it recommends.
        warnings.simplefilter("ignore", DeprecationWarning)
        layer = CachePersistenceLayer(client=client)
    config = IdempotencyConfig(event_key_jmespath="id", expires_after_seconds=3600)
    decorated = idempotent_function(
        data_keyword_argument="order",
        persistence_store=layer,
        config=config,
        key_prefix=name,
    )(work)
    try:
        yield lambda order: decorated(order=order)
    finally:
        delete_prefix(name)
        client.close()


def delete_prefix(prefix: str) -> None:
    """Delete every Redis key this benchmark created under `prefix`."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def cpu_seconds() -> float:
    """Return the CPU time this process has used so far, user and system, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(call: Call, orders: list[dict[str, Any]]) -> tuple[float, float]:
    """Return calls per second of `call` over `orders`, one thread, and CPU µs per call.

    CPU time moves far less than wall time on a shared machine: it leaves out the time spent
    waiting for the server and for a core.
    """
    start, cpu = time.perf_counter(), cpu_seconds()
    for order in orders:
        call(order)
    cpu = cpu_seconds() - cpu
    return len(orders) / (time.perf_counter() - start), cpu / len(orders) * 1e6


def main() -> None:
    """Run every variant in alternating rounds and print a Markdown table of medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median kept)")
    parser.add_argument("--backends", default="memory,sqlite,postgres,redis")
    args = parser.parse_args()
    # Powertools asks for a Lambda context to bound its in-progress expiry; there is none here.
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    run_id = secrets.token_hex(4)
    names = ["bare function", *(f"retrysafe {b}" for b in args.backends.split(","))]
    names.append("Powertools redis")
    # The head-to-head pair runs first in every round, back to back, in alternating order, so
    # neither inherits the disk and CPU load that the SQLite and PostgreSQL variants leave.
    pair = [n for n in names if n in ("retrysafe redis", "Powertools redis")]
    rest = [n for n in names if n not in pair]
    results: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            step = 1 if round_index % 2 == 0 else -1
            for variant in [*pair[::step], *rest[::step]]:
                time.sleep(0.2)  # let the previous variant's background work settle
                name = f"bench_fn_{run_id}_{round_index}_{variant.split()[-1]}"
                orders = [{"id": f"{name}-{i}", "amount": i} for i in range(args.calls)]
                if variant == "bare function":
                    measured = measure(work, orders)
                    for path in ("first", "replay"):
                        results.setdefault((variant, path), []).append(measured[0])
                        cpu.setdefault((variant, path), []).append(measured[1])
                    continue
                if variant == "Powertools redis":
                    context = powertools_variant(name)
                else:
                    context = retrysafe_variant(variant.split()[-1], Path(tmp), name)
                with context as call:
                    for path in ("first", "replay"):
                        rate, cpu_us = measure(call, orders)
                        results.setdefault((variant, path), []).append(rate)
                        cpu.setdefault((variant, path), []).append(cpu_us)
    powertools = {
        p: statistics.median(results[("Powertools redis", p)]) for p in ("first", "replay")
    }
    print(f"\n{args.calls} calls per variant, median of {args.rounds} alternating rounds\n")
    print(
        "| variant | first call / s | replay / s | vs Powertools (first, replay) "
        "| CPU µs per call (first, replay) |"
    )
    print("|---|---:|---:|---:|---:|")
    for variant in names:
        first = statistics.median(results[(variant, "first")])
        replay = statistics.median(results[(variant, "replay")])
        versus = f"{first / powertools['first']:.1f}x, {replay / powertools['replay']:.1f}x"
        cpu_first = statistics.median(cpu[(variant, "first")])
        cpu_replay = statistics.median(cpu[(variant, "replay")])
        print(
            f"| {variant} | {first:,.0f} | {replay:,.0f} | {versus} "
            f"| {cpu_first:,.1f}, {cpu_replay:,.1f} |"
        )


if __name__ == "__main__":
    main()
