"""Scale-out: N app processes on one shared store, under a mix with concurrent duplicates.

    .venv/bin/python scripts/services.py -- .venv/bin/python benchmarks/scaleout.py \
        [--stores postgres,redis] [--instances 1,2,4] [--duration 8] [--rounds 3] \
        [--connections 16] [--generators 1] [--no-bare] [--json out.json]

For each store (a name, `postgres`, `redis`, `redis-cluster`, `sqlite`, taken from the
RETRYSAFE_TEST_*_URL variables that scripts/services.py sets, or any store URL), this starts as
many uvicorn processes as the largest `--instances` behind retrysafe's middleware on that store
(a table or key prefix of this run's own), and as many bare ones (the same app without
retrysafe, for the baseline); each `POST /effects` execution is counted in an effect sink
(benchmarks/_scaleout_apps.py). Each sample loads the first N of them for `--duration` seconds
with the mix of benchmarks/_scaleout_load.py: first-time requests, 30% replays of earlier keys,
10% concurrent duplicates of one key sent at the same moment to different instances.

Samples alternate within each round (reversed every other round) and rounds repeat, since the
machine is noisy; the median over rounds is reported. After the rounds, the sinks are read:
a double execution is a key whose effect ran more than once (must be 0 with retrysafe; the
bare rows show what the same load does without it). Exit 1 if any retrysafe sample broke the
promise (a double execution, a lost effect or a wrong answer).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path; the shared modules are imported
# as `benchmarks.*` from the repository root (as the instances and the tests import them).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse
import contextlib
import json
import secrets
import statistics
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._scaleout_apps import (
    EffectSink,
    Instances,
    default_sink_for,
    drop_store,
    instances,
    store_url_for_run,
)
from benchmarks._scaleout_load import LoadResult, Mix, run_load
from benchmarks.http_middleware import cpu_seconds

VARIANTS = ("retrysafe", "bare")
WARM_UP_REQUESTS = 600


@dataclass
class Sample:
    """One measured load of N instances."""

    store: str
    variant: str
    instances: int
    round: int
    throughput: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: dict[str, int]
    violations: int
    duplicate_share: float
    generator_cpu: float  # share of one core the load generators used
    app_cpu: float  # cores the app processes used
    machine_busy: float  # share of all cores busy (apps, store, generator, anything else)
    raced: int  # duplicates that found their key in flight and waited (from /stats)
    refused: int  # duplicates whose wait ran out: 409 request-in-flight
    keys: list[str] = field(repr=False, default_factory=list)
    doubles: int = 0
    lost: int = 0


def machine_busy_seconds() -> tuple[float, float]:
    """Return (busy, total) CPU seconds of the whole machine, from /proc/stat (Linux)."""
    try:
        fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan"), float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])
    return (total - fields[3] - fields[4]) / ticks, total / ticks


def measure(
    group: Instances, *, store: str, variant: str, count: int, round_index: int, args: Any
) -> Sample:
    """Load the group's first `count` instances for `--duration` seconds; return the sample."""
    pids = group.pids[:count]
    stats_before = group.stats()[:count]
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    busy_before, total_before = machine_busy_seconds()
    result: LoadResult = run_load(
        group.ports[:count],
        run=f"{group.sink.run}-n{count}-r{round_index}",
        duration=args.duration,
        connections=args.connections,
        generators=args.generators,
        mix=Mix(args.replays, args.duplicates, args.group),
        bare=variant == "bare",
        seed=round_index + 1,
    )
    busy, total = machine_busy_seconds()
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    stats_after = group.stats()[:count]
    raced = sum(
        a.get("waited", 0) - b.get("waited", 0)
        for a, b in zip(stats_after, stats_before, strict=True)
    )
    return Sample(
        store=store, variant=variant, instances=count, round=round_index + 1,
        throughput=result.throughput, p50_ms=result.percentile(0.50),
        p99_ms=result.percentile(0.99), requests=result.requests, errors=dict(result.errors),
        violations=result.violation_count, duplicate_share=result.duplicate_share,
        generator_cpu=result.generator_cpu_seconds / result.seconds,
        app_cpu=cpu / result.seconds,
        machine_busy=(busy - busy_before) / (total - total_before),
        raced=raced, refused=result.refused, keys=result.keys,
    )  # fmt: skip


def count_effects(samples: list[Sample], sinks: dict[tuple[str, str], EffectSink]) -> None:
    """Read each sink once; set every sample's double executions and lost effects."""
    for (store, variant), sink in sinks.items():
        counts = sink.counts()
        for sample in samples:
            if (sample.store, sample.variant) == (store, variant):
                sample.doubles = sum(1 for key in sample.keys if counts[key] > 1)
                sample.lost = sum(1 for key in sample.keys if counts[key] == 0)


def report(samples: list[Sample], stores: list[str], counts: list[int]) -> list[dict[str, Any]]:
    """Print one Markdown table per store (medians over rounds); return the rows."""
    rows = []
    for store in stores:
        print(f"\n**{store}**\n")
        print(
            "| instances | app | req/s | x bare | p50 ms | p99 ms | requests | errors "
            "| double executions | raced duplicates | generator CPU | apps CPU | machine busy |"
        )
        print("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
        for count in counts:
            by_variant = {
                v: [s for s in samples if (s.store, s.variant, s.instances) == (store, v, count)]
                for v in VARIANTS
            }
            for variant, mine in by_variant.items():
                if not mine:
                    continue
                bare = by_variant.get("bare", [])
                ratios = [m.throughput / b.throughput for m, b in zip(mine, bare, strict=False)]
                errors = sum((Counter(s.errors) for s in mine), Counter())
                row = {
                    "store": store,
                    "app": variant,
                    "instances": count,
                    "throughput": statistics.median(s.throughput for s in mine),
                    "x_bare": statistics.median(ratios) if variant != "bare" and ratios else None,
                    "p50_ms": statistics.median(s.p50_ms for s in mine),
                    "p99_ms": statistics.median(s.p99_ms for s in mine),
                    "requests": sum(s.requests for s in mine),
                    "errors": dict(errors),
                    "violations": sum(s.violations for s in mine),
                    "doubles": sum(s.doubles for s in mine),
                    "lost": sum(s.lost for s in mine),
                    "raced": sum(s.raced for s in mine),
                    "refused": sum(s.refused for s in mine),
                    "duplicate_share": statistics.median(s.duplicate_share for s in mine),
                    "generator_cpu": statistics.median(s.generator_cpu for s in mine),
                    "app_cpu": statistics.median(s.app_cpu for s in mine),
                    "machine_busy": statistics.median(s.machine_busy for s in mine),
                    "rounds": [round(s.throughput) for s in mine],
                }
                rows.append(row)
                shown_errors = ", ".join(f"{k}: {n}" for k, n in sorted(errors.items())) or "0"
                doubles = f"{row['doubles']:,}" + (" (no idempotency)" if variant == "bare" else "")
                raced = f"{row['raced']:,} ({row['refused']} got 409)" if variant != "bare" else "-"
                print(
                    f"| {count} | {variant} | {row['throughput']:,.0f} "
                    f"| {'-' if row['x_bare'] is None else format(row['x_bare'], '.2f')} "
                    f"| {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['requests']:,} "
                    f"| {shown_errors} | {doubles} "
                    f"| {raced} "
                    f"| {row['generator_cpu']:.0%} | {row['app_cpu']:.2f} "
                    f"| {row['machine_busy']:.0%} |"
                )
    return rows


def start_groups(
    args: Any, name: str, workdir: Path, stack: contextlib.ExitStack
) -> tuple[list[str], dict[tuple[str, str], EffectSink], dict[tuple[str, str], Instances]]:
    """Start every store's groups of instances, each warmed up, to be stopped by `stack`;
    return the stores that started, and the sinks and groups by (store, variant)."""
    counts = [int(n) for n in args.instances.split(",")]
    variants = ["retrysafe"] if args.no_bare else list(VARIANTS)
    stores = []
    sinks: dict[tuple[str, str], EffectSink] = {}
    groups: dict[tuple[str, str], Instances] = {}
    for index, store in enumerate(args.stores.split(",")):
        url = store_url_for_run(store, f"{name}_{index}", workdir)
        stack.callback(drop_store, url)
        label = store if "://" not in store else store.split("://", 1)[0]
        try:
            for variant in variants:
                sink = EffectSink(default_sink_for(url), f"{name}_{index}{variant[0]}")
                sink.create()
                stack.callback(sink.drop)
                sinks[label, variant] = sink
                group = stack.enter_context(
                    instances(url if variant == "retrysafe" else None, sink, max(counts))
                )
                groups[label, variant] = group
                run_load(group.ports, run=f"{sink.run}-warm", requests=WARM_UP_REQUESTS)
        except RuntimeError as error:
            print(f"!!! {label}: {error}; this store is left out of the run !!!", flush=True)
            for variant in variants:
                sinks.pop((label, variant), None)
            continue
        stores.append(label)
    return stores, sinks, groups


def main() -> int:
    """Run the benchmark; return 1 if retrysafe broke its promise in any sample."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--stores", default="postgres,redis", help="names or store URLs")
    parser.add_argument("--instances", default="1,2,4", help="instance counts to measure")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per sample")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--connections", type=int, default=16, help="workers per generator")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--replays", type=float, default=Mix.replays, help="share of replays")
    parser.add_argument("--duplicates", type=float, default=Mix.duplicates)
    parser.add_argument("--group", type=int, default=Mix.group, help="requests per duplicate")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare baseline")
    parser.add_argument("--json", type=Path, help="also write the rows and samples here")
    args = parser.parse_args()
    counts = sorted({int(n) for n in args.instances.split(",")})
    variants = ["retrysafe"] if args.no_bare else list(VARIANTS)
    name = f"scaleout_{secrets.token_hex(4)}"
    print(
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
        f"{args.rounds} rounds of {args.duration:g} s per sample, {args.generators} generator(s) "
        f"x {args.connections} connections",
        flush=True,
    )
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stores, sinks, groups = start_groups(args, name, Path(tmp), stack)
        configs = [(s, v, n) for s in stores for n in counts for v in variants]
        for round_index in range(args.rounds):
            for store, variant, count in configs if round_index % 2 == 0 else configs[::-1]:
                sample = measure(
                    groups[store, variant], store=store, variant=variant, count=count,
                    round_index=round_index, args=args,
                )  # fmt: skip
                samples.append(sample)
                print(
                    f"  round {round_index + 1} {store:14} {variant:9} x{count} "
                    f"{sample.throughput:7,.0f} req/s  p99 {sample.p99_ms:6.1f} ms  "
                    f"errors {sum(sample.errors.values())}  violations {sample.violations}",
                    flush=True,
                )
        count_effects(samples, sinks)
        print(f"\nload average {os.getloadavg()[0]:.2f} at the end", flush=True)
    rows = report(samples, stores, counts)
    if args.json:
        kept = [{k: v for k, v in asdict(s).items() if k != "keys"} for s in samples]
        args.json.write_text(json.dumps({"rows": rows, "samples": kept}, indent=2) + "\n")
    broken = [
        s
        for s in samples
        if s.variant == "retrysafe" and (s.doubles or s.lost or s.violations or s.errors)
    ]
    for sample in broken:
        print(
            f"!!! {sample.store} x{sample.instances} round {sample.round}: {sample.doubles} "
            f"double executions, {sample.lost} lost, {sample.violations} wrong answers, "
            f"errors {sample.errors}",
            file=sys.stderr,
        )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
