"""The middleware's own cost per request, without sockets: each variant's app called in-process.

    .venv/bin/python scripts/services.py -- .venv/bin/python benchmarks/http_inprocess.py \
        [--variants bare,memory,fik-memory,redis,...] [--scenarios first,replay,nokey] \
        [--requests 4000] [--rounds 5] [--instructions]

The FastAPI app of `benchmarks/http_middleware.py` (`build_app`: the same endpoint, stores and
peers), called as an ASGI app by 16 tasks on uvloop. No server, socket or load generator takes
a share: what is measured is the app, the middleware and the store's client. Per request:

- CPU time (default): the fastest of `--rounds` runs of `--requests` requests, after a warm-up
  of 2,000 (`time.process_time`, so a store server's own work is not counted);
- `--instructions`: the instructions valgrind's callgrind counts, as the difference between runs
  of 2,400 and 400 requests (start-up cancels out). Slow (about 50 s a variant), but the count
  does not move with the machine's load: the measure to compare two versions of the code with.

Every variant runs in a process of its own from `benchmarks/.venv-peers` (made by
http_middleware.py), bare first; `added` is the difference to bare, in the same run.
"""

from __future__ import annotations

# The drivers import their stack lazily; they and valgrind run as subprocesses.
# ruff: noqa: PLC0415, S603
import os
import sys

# Run as a script, this file's folder comes first on sys.path (see http_middleware.py).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse
import asyncio
import itertools
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parent))  # last: it shadows nothing
import http_middleware as bench  # the app, stores and peers of the HTTP benchmark

SCENARIOS = ["first", "replay", "nokey"]
TASKS = 16
WARM_UP = 2000
SMALL, LARGE = 400, 2400  # the two callgrind runs; their difference is what is counted


def drive(variant: str, scenario: str, store: str, requests: int, rounds: int) -> None:
    """Build `variant`'s app, send it `requests` requests `rounds` times, print µs per request
    (`rounds` 0: one run, no warm-up and no output, for callgrind)."""
    import uvloop

    if variant == "idemkit-postgres":
        from idemkit.backends.postgres import init_pg

        asyncio.run(init_pg(bench.POSTGRES_URL, table=store))
    app = bench.build_app(variant, store)
    counter = itertools.count()

    async def request(key: str | None) -> int:
        headers = [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(bench.BODY)).encode()),
            (b"authorization", b"Bearer bench"),
        ]
        if key is not None:
            headers.append((b"idempotency-key", key.encode()))
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/payments", "raw_path": b"/payments",
            "query_string": b"", "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8000),
        }  # fmt: skip
        messages = [{"type": "http.request", "body": bench.BODY, "more_body": False}]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await app(scope, receive, send)
        return statuses[0]

    async def run(count: int, key: Callable[[], str | None]) -> None:
        async def task() -> None:
            for _ in range(count // TASKS):
                status = await request(key())
                if status not in (200, 201):
                    raise SystemExit(f"{variant} answered {status}")

        await asyncio.gather(*(task() for _ in range(TASKS)))

    async def main() -> None:
        key: Callable[[], str | None]
        if scenario == "first":
            key = lambda: f"first-{next(counter)}"  # noqa: E731
        elif scenario == "replay":
            keys = [f"replay-{index}" for index in range(bench.REPLAY_KEYS)]
            for name in keys:
                await request(name)
            cycle = itertools.cycle(keys)
            key = lambda: next(cycle)  # noqa: E731
        else:
            key = lambda: None  # noqa: E731
        if rounds == 0:
            await run(requests, key)
            return
        await run(WARM_UP, key)
        timings = []
        for _ in range(rounds):
            started = time.process_time()
            await run(requests, key)
            timings.append((time.process_time() - started) / requests * 1e6)
        print(min(timings))

    uvloop.run(main())


def measure(python: Path, variant: str, scenario: str, store: str, args: Any) -> float:
    """Return `variant`'s µs (or, with `--instructions`, instructions) per request."""
    command = [str(python), __file__, "drive", variant, scenario, "--store", store]
    if not args.instructions:
        command += ["--requests", str(args.requests), "--rounds", str(args.rounds)]
        return float(subprocess.run(command, check=True, capture_output=True).stdout)
    valgrind = shutil.which("valgrind") or "valgrind"
    counts = []
    for requests in (LARGE, SMALL):
        out = subprocess.run(
            [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null",
             *command, "--requests", str(requests), "--rounds", "0"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        found = re.search(r"Collected : (\d+)", out.stderr)
        if found is None:
            raise SystemExit(f"callgrind counted nothing for {variant}:\n{out.stderr}")
        counts.append(int(found.group(1)))
    return (counts[0] - counts[1]) / (LARGE - SMALL)


def main() -> None:
    """Measure every variant and scenario (or, with `drive`, one of them)."""
    if len(sys.argv) > 1 and sys.argv[1] == "drive":
        parser = argparse.ArgumentParser()
        parser.add_argument("drive")
        parser.add_argument("variant")
        parser.add_argument("scenario", choices=SCENARIOS)
        parser.add_argument("--store", default="")
        parser.add_argument("--requests", type=int, required=True)
        parser.add_argument("--rounds", type=int, required=True)
        args = parser.parse_args()
        drive(args.variant, args.scenario, args.store, args.requests, args.rounds)
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variants", default="memory,fik-memory,redis,idemkit-redis")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--requests", type=int, default=4000, help="requests per timed run")
    parser.add_argument("--rounds", type=int, default=5, help="timed runs (the fastest is kept)")
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    args = parser.parse_args()
    variants = ["bare", *(v for v in args.variants.split(",") if v != "bare")]
    scenarios = args.scenarios.split(",")
    known = bench.VARIANTS + bench.EXTRA_VARIANTS
    unknown = set(variants) - set(known) | set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown variants or scenarios: {sorted(unknown)}")
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install -y valgrind).")
    python = bench.ensure_peers()
    name = f"bench_inproc_{secrets.token_hex(4)}"
    unit = "instructions" if args.instructions else "CPU µs"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"| scenario | variant | {unit} per request | added to bare |")
            print("|---|---|---:|---:|")
            for scenario in scenarios:
                bare = 0.0
                for variant in variants:
                    store = bench.store_of(variant, name, Path(tmp))
                    value = measure(python, variant, scenario, store, args)
                    bare = value if variant == "bare" else bare
                    shown = f"{value:,.0f}" if args.instructions else f"{value:.1f}"
                    added = value - bare
                    more = f"{added:+,.0f}" if args.instructions else f"{added:+.1f}"
                    print(f"| {scenario} | {variant} | {shown} | {more} |", flush=True)
    finally:
        bench.cleanup([], name)


if __name__ == "__main__":
    main()
