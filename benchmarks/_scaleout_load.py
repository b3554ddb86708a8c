"""The scale-out load generator: first-time requests, replays and concurrent duplicates.

    python -m benchmarks._scaleout_load CONFIG_JSON     (prints one JSON result)

Shared by `benchmarks/scaleout.py` and `tests/test_scaleout.py`; `run_load` starts the
generator processes and merges what they saw. Each generator runs `connections` workers on one
asyncio loop; a worker keeps one HTTP/1.1 keep-alive connection to every instance and repeats
one of three operations, chosen so that the *requests* follow the mix (`Mix`) exactly:

- first:     a new key, one request to a random instance (expects 201, not replayed);
- replay:    a key this generator completed earlier, to a random instance (expects the first
             answer's body byte for byte, with `Idempotent-Replayed: true`);
- duplicate: a new key sent by `group` requests at the same moment, each to a DIFFERENT
             instance (at most one per instance; with one instance, all to it). Every answer must
             be the one outcome (one 201 body, at most one of them not replayed) or a 409
             `request-in-flight` refusal (docs/http.md, "Concurrency and waiting").

The client is a small HTTP/1.1 writer and reader on asyncio streams, not httpx: it spends a
fraction of httpx's CPU per request, which matters when generator, apps and store share two
cores. Each generator reports its CPU time, so a run can tell whether it was the bottleneck.
"""

from __future__ import annotations

# ruff: noqa: S603
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REPLAYED = "idempotent-replayed"
_REQUEST_SECONDS = 30.0
_KEEP_VIOLATIONS = 20


@dataclass(frozen=True)
class Mix:
    """The share of requests that are replays and concurrent duplicates (the rest: first-time),
    how many requests a duplicate group sends at once, and the size of a `note` each new
    request carries (the app echoes it, so it grows the stored response by as much)."""

    replays: float = 0.30
    duplicates: float = 0.10
    group: int = 2
    note_bytes: int = 0

    def body(self, customer: str, amount: int) -> bytes:
        """Return a request body."""
        note = b',"note":"%s"' % (b"n" * self.note_bytes) if self.note_bytes else b""
        return b'{"customer":"%s","amount":%d,"currency":"EUR"%s}' % (
            customer.encode(), amount, note,
        )  # fmt: skip


@dataclass
class Answer:
    """One response: status, the replay header, body."""

    status: int
    replayed: bool
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection to a loopback port; opened on first use."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, key: str, body: bytes) -> Answer:
        """POST `body` to /effects with `key`; return the answer (raises on a broken one)."""
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        try:
            writer.write(
                b"POST /effects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer scaleout\r\n"
                b"Content-Type: application/json\r\nIdempotency-Key: %s\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (key.encode(), len(body), body)
            )
            async with asyncio.timeout(_REQUEST_SECONDS):
                return await self._read(reader)
        except BaseException:
            self.close()
            raise

    async def _read(self, reader: asyncio.StreamReader) -> Answer:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:  # chunked: uvicorn's answer to a body without a length
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Answer(status, headers.get(REPLAYED) == "true", body)

    def close(self) -> None:
        """Drop the connection; the next request opens a new one."""
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


@dataclass
class Tally:
    """What one generator saw."""

    requests: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)  # "first 201", "duplicate 409"...
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    keys: list[str] = field(default_factory=list)  # every new key this generator sent
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def violation(self, text: str) -> None:
        """Record a broken promise (kept in full for the first few)."""
        self.violation_count += 1
        if len(self.violations) < _KEEP_VIOLATIONS:
            self.violations.append(text)


class Generator:
    """One process's workers, sharing its budget, its completed keys and its tally."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.ports: list[int] = config["ports"]
        self.run: str = config["run"]
        self.bare: bool = config["bare"]
        self.mix = Mix(**config["mix"])
        self.budget: int | None = config.get("requests")
        self.deadline: float | None = None
        self.duration: float | None = config.get("duration")
        self.seed: int = config["seed"]
        self.tally = Tally()
        self.completed: list[tuple[str, bytes, bytes]] = []  # key, request body, outcome body
        self._keys = 0
        group = min(self.mix.group, len(self.ports)) if len(self.ports) > 1 else self.mix.group
        self.group = max(group, 2)
        self.sent: Counter[str] = Counter()  # requests reserved, by kind

    def new_key(self) -> str:
        """Return a key no one has sent."""
        self._keys += 1
        key = f"{self.run}-{self.seed}-{self._keys}"
        self.tally.keys.append(key)
        return key

    def take(self) -> str | None:
        """Choose the next operation and reserve its requests; None once the run is over.

        The kind is the one furthest behind its share, duplicates first, so the requests follow
        the mix exactly (duplicates never below their share) rather than by chance.
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return None
        sent = self.tally.requests
        if self.budget is not None and sent >= self.budget:
            return None
        if self.sent["duplicate"] < self.mix.duplicates * (sent + 1):
            kind, count = "duplicate", self.group
        elif self.completed and self.sent["replay"] < self.mix.replays * (sent + 1):
            kind, count = "replay", 1
        else:
            kind, count = "first", 1
        self.sent[kind] += count
        self.tally.requests += count
        return kind

    async def timed(
        self, kind: str, connection: Connection, key: str, body: bytes
    ) -> Answer | None:
        """Send one request; record its latency and status (or its error)."""
        started = time.perf_counter()
        try:
            answer = await connection.post(key, body)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            self.tally.statuses[f"{kind} {type(error).__name__}"] += 1
            return None
        self.tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.tally.statuses[f"{kind} {answer.status}"] += 1
        return answer

    async def worker(self, index: int) -> None:
        """Send operations until the budget or the time is spent."""
        rng = random.Random(self.seed * 1000 + index)
        # One connection per instance; with one instance, one per request of a duplicate group.
        connections = [Connection(port) for port in self.ports]
        if len(self.ports) == 1:
            connections += [Connection(self.ports[0]) for _ in range(self.group - 1)]
        try:
            while True:
                kind = self.take()
                if kind is None:
                    return
                if kind == "duplicate":
                    await self.duplicate(rng, connections)
                else:
                    await self.single(kind, rng, connections)
        finally:
            for connection in connections:
                connection.close()

    async def single(self, kind: str, rng: random.Random, connections: list[Connection]) -> None:
        """A first-time request, or a replay of a completed key."""
        if kind == "replay":
            key, body, expected = rng.choice(self.completed)
        else:
            key, expected = self.new_key(), None
            body = self.mix.body(f"cus_{self._keys % 1000}", 100 + self._keys)
        answer = await self.timed(kind, connections[rng.randrange(len(self.ports))], key, body)
        if answer is None:
            return
        if self.bare:
            if expected is None and answer.status == 201:
                self.completed.append((key, body, answer.body))
            return
        if answer.status != 201:
            self.tally.violation(f"{kind} {key}: {answer.status} {answer.body[:200]!r}")
        elif expected is None:
            if answer.replayed:
                self.tally.violation(f"first {key}: replayed")
            self.completed.append((key, body, answer.body))
        elif not answer.replayed or answer.body != expected:
            self.tally.violation(f"replay {key}: {answer.body!r} is not {expected!r}")

    async def duplicate(self, rng: random.Random, connections: list[Connection]) -> None:
        """One new key, sent `group` times at once to different instances."""
        key = self.new_key()
        body = self.mix.body("cus_dup", 100 + self._keys)
        # `group` different instances; with one instance, the worker's connections to it.
        targets = rng.sample(connections, self.group) if len(self.ports) > 1 else connections
        answers = await asyncio.gather(
            *(self.timed("duplicate", target, key, body) for target in targets)
        )
        outcomes = {a.body for a in answers if a is not None and a.status == 201}
        executed = sum(1 for a in answers if a is not None and a.status == 201 and not a.replayed)
        refused = [a.status for a in answers if a is not None and a.status not in (201, 409)]
        if self.bare:
            if outcomes:
                self.completed.append((key, body, outcomes.pop()))
            return
        if len(outcomes) > 1 or executed > 1 or refused:
            shown = [(a.status, a.replayed, a.body[:120]) if a else None for a in answers]
            self.tally.violation(f"duplicate {key}: {shown}")
        if len(outcomes) == 1 and not refused:
            self.completed.append((key, body, outcomes.pop()))

    async def run_all(self, connections: int, start_at: float) -> Tally:
        """Run the workers from wall-clock time `start_at`; return the tally."""
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu = time.process_time()
        started = time.monotonic()
        if self.duration is not None:
            self.deadline = started + self.duration
        await asyncio.gather(*(self.worker(index) for index in range(connections)))
        self.tally.seconds = time.monotonic() - started
        self.tally.cpu_seconds = time.process_time() - cpu
        return self.tally


# ---------------------------------------------------------------------------------------------
# The driver side.


@dataclass
class LoadResult:
    """Every generator's tally, merged."""

    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: Counter[str]
    violations: list[str]
    violation_count: int
    keys: list[str]
    generator_cpu_seconds: float

    @property
    def throughput(self) -> float:
        """Requests per second over the run."""
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        """The latency (ms) below which `fraction` of the answered requests fell."""
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def errors(self) -> Counter[str]:
        """Statuses other than 201 and the 409 a concurrent duplicate may get (docs/http.md),
        and failures without a response."""
        allowed = (" 201", "duplicate 409")
        return Counter({s: n for s, n in self.statuses.items() if not s.endswith(allowed)})

    @property
    def refused(self) -> int:
        """Concurrent duplicates answered 409 `request-in-flight` (their wait ran out)."""
        return self.statuses["duplicate 409"]

    @property
    def duplicate_share(self) -> float:
        """The share of requests sent as concurrent duplicates."""
        sent = sum(n for s, n in self.statuses.items() if s.startswith("duplicate "))
        return sent / self.requests if self.requests else 0.0


def run_load(
    ports: list[int],
    *,
    run: str,
    requests: int | None = None,
    duration: float | None = None,
    connections: int = 16,
    generators: int = 1,
    mix: Mix | None = None,
    bare: bool = False,
    seed: int = 1,
) -> LoadResult:
    """Load the instances on `ports` with `requests` requests in all, or for `duration` seconds,
    from `generators` processes of `connections` workers each; return what they saw."""
    start_at = time.time() + 0.5 + 0.2 * generators
    mix = mix or Mix()
    processes = []
    for index in range(generators):
        share = (
            None if requests is None else requests // generators + (index < requests % generators)
        )
        config = {
            "ports": ports, "run": run, "bare": bare, "requests": share, "duration": duration,
            "seed": seed * 100 + index, "connections": connections, "start_at": start_at,
            "mix": asdict(mix),
        }  # fmt: skip
        command = [sys.executable, "-m", "benchmarks._scaleout_load", json.dumps(config)]
        processes.append(subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE))
    tallies = []
    for process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"a load generator failed ({process.returncode})")
        tallies.append(json.loads(output))
    return LoadResult(
        requests=sum(t["requests"] for t in tallies),
        seconds=max(t["seconds"] for t in tallies),
        latencies_ms=[x for t in tallies for x in t["latencies_ms"]],
        statuses=sum((Counter(t["statuses"]) for t in tallies), Counter()),
        violations=[v for t in tallies for v in t["violations"]],
        violation_count=sum(t["violation_count"] for t in tallies),
        keys=[k for t in tallies for k in t["keys"]],
        generator_cpu_seconds=sum(t["cpu_seconds"] for t in tallies),
    )


def main() -> None:
    """Run one generator from the JSON config in argv[1]; print its tally as JSON."""
    config = json.loads(sys.argv[1])
    generator = Generator(config)
    tally = asyncio.run(generator.run_all(config["connections"], config["start_at"]))
    result = {**tally.__dict__, "statuses": dict(tally.statuses), "pid": os.getpid()}
    sys.stdout.write(json.dumps(result))


if __name__ == "__main__":
    main()
