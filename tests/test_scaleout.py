"""Issue 16's scale-out proof: app processes sharing one store never run a key's effect twice.

Real uvicorn processes (`benchmarks/_scaleout_apps.py`, the apps `benchmarks/scaleout.py`
measures) share one PostgreSQL or Redis store; the load generator (`benchmarks/_scaleout_load.py`)
sends first-time requests, replays and, as 10% of the requests, concurrent duplicates of one key
sent at the same moment to different instances. Each execution is counted outside the apps
(a row in a PostgreSQL table without a unique constraint, or a Redis `HINCRBY`), so a double
execution would show as a count of 2.

RETRYSAFE_SCALEOUT_REQUESTS (default 20,000, the issue's number) and
RETRYSAFE_SCALEOUT_INSTANCES (default 2) change the size of the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks._scaleout_apps import EffectSink, default_sink_for, instances
from benchmarks._scaleout_load import Mix, run_load
from tests.conftest import fresh_store_url, unique_name

REQUESTS = int(os.environ.get("RETRYSAFE_SCALEOUT_REQUESTS", "20000"))
INSTANCES = max(2, int(os.environ.get("RETRYSAFE_SCALEOUT_INSTANCES", "2")))
MIX = Mix(replays=0.30, duplicates=0.10, group=2)


@pytest.mark.parametrize("backend", ["postgres", "redis", "redis-cluster"])
def test_no_key_runs_twice_across_instances(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Under 20,000 requests, 10% concurrent duplicates across instances, every key runs once."""
    with fresh_store_url(backend, request, tmp_path) as store_url:
        sink = EffectSink(default_sink_for(store_url), unique_name("scaleout"))
        sink.create()
        try:
            with instances(store_url, sink, INSTANCES) as group:
                result = run_load(group.ports, run=sink.run, requests=REQUESTS, mix=MIX)
                stats = group.stats()
            counts = sink.counts()
        finally:
            sink.drop()

    assert result.requests >= REQUESTS
    assert result.duplicate_share >= MIX.duplicates
    # Every answer is a 201 (first, replay, or the one outcome of a duplicate) or, for a
    # duplicate whose wait ran out, 409 request-in-flight: no other status, no failure.
    assert dict(result.errors) == {}
    # Replays got the first answer's body with the replay header; a duplicate group got one
    # body (at most one of its answers not replayed) or 409s.
    assert result.violations == []
    assert result.violation_count == 0
    # Counted at the effect: each key sent ran exactly once, and nothing else ran.
    assert {key: counts[key] for key in result.keys if counts[key] != 1} == {}
    assert set(counts) == set(result.keys)
    # The run exercised what it claims: every instance executed keys, and duplicates met
    # their key in flight on another instance (they waited, or got 409).
    assert all(instance.get("execute", 0) > 0 for instance in stats)
    assert sum(instance.get("waited", 0) for instance in stats) + result.refused > 0
