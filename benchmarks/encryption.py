"""The cost of encryption at rest: the same store bare and encrypted, side by side, in one run.

    .venv/bin/python benchmarks/encryption.py [--ops 2000] [--rounds 5] [--size 1024]
        [--backends memory,sqlite]

For each store (sync face, one thread), a bare `open_store(url)` and the same URL with an
`encryption=Keyring(...)` (what `?encryption_key_env=NAME` builds) run, alternating within
each round: claim + complete of a new key (a first request: the outcome sealed), then a claim
that finds it (a replay: the outcome opened). Each figure is the median over the rounds of
throughput and of the process's CPU time per operation (`time.process_time`), steadier on a
shared machine. The last line times sealing and opening one outcome alone: the cost on any
store, whose round trips the encryption does not change.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from retrysafe import Identity, Store, open_store
from retrysafe.stores.encrypted import Keyring

LEASE, RETENTION = 30.0, 3600.0
URLS: dict[str, Callable[[Path], str]] = {
    "memory": lambda _: "memory://",
    "sqlite": lambda tmp: f"sqlite:///{tmp / 'bench.db'}",
}


def timed(operation: Callable[[Identity], object], keys: list[Identity]) -> tuple[float, float]:
    """Run `operation` on every key; return (operations per second, CPU microseconds per op)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for key in keys:
        operation(key)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(keys) / wall, cpu / len(keys) * 1e6


def measure(store: Store, outcome: bytes, ops: int) -> dict[str, tuple[float, float]]:
    """Time claim + complete over `ops` new keys, then a replay of each."""
    keys = [Identity("bench", "tenant", secrets.token_hex(8)) for _ in range(ops)]

    def first(identity: Identity) -> None:
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        store.complete(identity, claim.token, outcome, retention=RETENTION)

    def replay(identity: Identity) -> None:
        claim = store.claim(identity, "fp", lease=LEASE, retention=RETENTION)
        if claim.record.outcome != outcome:
            raise RuntimeError("A replay did not return the stored outcome.")

    return {"claim+complete": timed(first, keys), "replay": timed(replay, keys)}


def run_backend(name: str, url: str, keyring: Keyring, args: argparse.Namespace) -> None:
    """Print the bare and encrypted figures of one backend."""
    outcome = secrets.token_bytes(args.size)
    stores = {"bare": open_store(url), "encrypted": open_store(url, encryption=keyring)}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.rounds):
            for variant, store in stores.items():
                for operation, figures in measure(store, outcome, args.ops).items():
                    results.setdefault((variant, operation), []).append(figures)
    finally:
        for store in stores.values():
            store.close()
    for operation in ("claim+complete", "replay"):
        bare, sealed = (_median(results[(v, operation)]) for v in ("bare", "encrypted"))
        print(
            f"| {name} | {operation} | {bare[0]:,.0f} | {sealed[0]:,.0f} "
            f"| {bare[1]:.1f} | {sealed[1]:.1f} | {sealed[1] - bare[1]:+.1f} |"
        )


def _median(figures: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(f[0] for f in figures), statistics.median(f[1] for f in figures)


def time_crypto(keyring: Keyring, size: int, ops: int) -> None:
    """Print the CPU time of sealing and opening one outcome, alone."""
    identity = Identity("bench", "tenant", "key")
    outcome = secrets.token_bytes(size)
    sealed = keyring.seal(identity, outcome)
    _, seal = timed(lambda i: keyring.seal(i, outcome), [identity] * ops)
    _, open_ = timed(lambda i: keyring.open(i, sealed), [identity] * ops)
    print(f"\nAES-256-GCM alone, {size} B outcome: seal {seal:.1f} µs, open {open_:.1f} µs (CPU).")


def main() -> None:
    """Parse the arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000, help="keys per round and variant")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is shown")
    parser.add_argument("--size", type=int, default=1024, help="outcome size in bytes")
    parser.add_argument("--backends", default="memory,sqlite", help="from " + ",".join(URLS))
    args = parser.parse_args()
    keyring = Keyring([Keyring.generate_key()])
    print(f"{args.ops} ops x {args.rounds} rounds, {args.size} B outcomes, sync face, 1 thread")
    print(
        "| store | operation | bare ops/s | encrypted ops/s | bare CPU µs/op "
        "| encrypted CPU µs/op | CPU added µs/op |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            run_backend(name, URLS[name](Path(tmp)), keyring, args)
    time_crypto(keyring, args.size, args.ops)


if __name__ == "__main__":
    main()
