"""Reading what `PrometheusObserver` counted, and proving no key or scope reached a label.

`Metrics` reads one test's `CollectorRegistry`; `Identities` is an observer that keeps the
keys, scope digests and namespaces of every operation, so `assert_no_identity_in_labels` can
check that none of them (nor a raw scope or credential the test names) is in any label value.
`cuttable_store` puts a real Redis or PostgreSQL store behind a relay that can cut it (B20).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry

from retrysafe.observe import DECISIONS, FACES, RESULTS, Observer, Operation
from retrysafe.observe.prometheus import PrometheusObserver
from tests.conftest import fresh_store_url
from tests.flow.relay import Relay

__all__ = [
    "SCOPE_SECRET",
    "Identities",
    "Metrics",
    "assert_no_identity_in_labels",
    "cuttable_store",
    "signal_waits",
]

SCOPE_SECRET: Final = "observe-tests-scope-secret-0123456789"
"""A configured scope secret: no store calls load one, so every store call is counted."""
_PRIMITIVES: Final = ("claim", "complete", "release", "renew", "get", "wait", "checkpoint")
_VOCABULARY: Final[dict[str, tuple[str, ...]]] = {
    "face": FACES,
    "decision": DECISIONS,
    "result": RESULTS,
    "operation": _PRIMITIVES,
}
"""Every label a retrysafe metric has, with all the values it may take (`le` aside)."""
_TIMEOUTS: Final = {
    "redis": "socket_timeout=1&connect_timeout=1",
    "postgres": "connect_timeout=1&pool_timeout=1",
}


class Metrics:
    """What one `PrometheusObserver` counted, read back from its registry.

    Args:
        registry: the registry the observer registered on.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.observer = PrometheusObserver(registry)

    def _by(self, sample_name: str, label: str, **match: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for metric in self.registry.collect():
            for sample in metric.samples:
                labels = sample.labels
                if sample.name != sample_name or sample.value == 0:
                    continue
                if all(labels.get(name) == value for name, value in match.items()):
                    found[labels[label]] = found.get(labels[label], 0) + int(sample.value)
        return found

    def decisions(self, face: str) -> dict[str, int]:
        """Return `retrysafe_requests_total` of `face`, by decision (counted ones only)."""
        return self._by("retrysafe_requests_total", "decision", face=face)

    def faces(self) -> dict[str, int]:
        """Return `retrysafe_requests_total` by face."""
        return self._by("retrysafe_requests_total", "face")

    def outcomes(self, face: str) -> dict[str, int]:
        """Return `retrysafe_outcome_total` of `face`, by result."""
        return self._by("retrysafe_outcome_total", "result", face=face)

    def store_calls(self) -> dict[str, int]:
        """Return how many of each store primitive `retrysafe_store_operation_seconds` timed."""
        return self._by("retrysafe_store_operation_seconds_count", "operation")

    def store_errors(self) -> dict[str, int]:
        """Return `retrysafe_store_errors_total` by primitive."""
        return self._by("retrysafe_store_errors_total", "operation")

    def waits(self) -> int:
        """Return how many waits `retrysafe_wait_seconds` timed."""
        value = self.registry.get_sample_value("retrysafe_wait_seconds_count")
        return int(value or 0)


class Identities(Observer):
    """Keeps the key, scope digest and namespace of every decided operation."""

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.operations: list[Operation] = []

    def decided(self, operation: Operation) -> None:
        """Keep what names the operation."""
        self.operations.append(operation)
        self.values.update(v for v in (operation.key, operation.scope, operation.namespace) if v)


def assert_no_identity_in_labels(
    registry: CollectorRegistry, identities: Identities, *raw: str
) -> None:
    """Assert that every label of every sample in `registry` is a known label with a value
    from its fixed vocabulary, and that none contains a key, a scope or a namespace that
    `identities` saw, nor any of `raw` (the scopes and credentials as the caller gave them)."""
    secrets = {value for value in (*identities.values, *raw) if value}
    assert secrets, "the operations named nothing to look for"
    seen = 0
    for metric in registry.collect():
        for sample in metric.samples:
            for name, value in sample.labels.items():
                seen += 1
                if name == "le":
                    float(value)  # a histogram bucket's bound: a number
                else:
                    assert value in _VOCABULARY[name], (name, value)
                assert not any(secret in value for secret in secrets), (name, value)
    assert seen, "the registry holds no labelled sample"


def signal_waits(store: Any, on_wait: Callable[[], object]) -> None:
    """Make `store.wait` call `on_wait()` first: a test then knows a duplicate is waiting (B15)."""
    wait = store.wait
    if inspect.iscoroutinefunction(wait):

        async def signalled_async(identity: Any, *, timeout: float) -> Any:
            on_wait()
            return await wait(identity, timeout=timeout)

        store.wait = signalled_async
    else:

        def signalled(identity: Any, *, timeout: float) -> Any:
            on_wait()
            return wait(identity, timeout=timeout)

        store.wait = signalled


@dataclass
class Cuttable:
    """A fresh real store behind a relay: `url` reaches it through the relay, `relay.cut()`
    takes the store away."""

    relay: Relay
    url: str


@contextlib.contextmanager
def cuttable_store(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Cuttable]:
    """Yield a fresh store on `backend` ("redis" or "postgres"), reached through a relay."""
    with fresh_store_url(backend, request, tmp_path) as url:
        parts = urlsplit(url)
        relay = Relay(parts.hostname or "127.0.0.1", parts.port or 0)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{relay.port}" if user else f"127.0.0.1:{relay.port}"
        query = f"{parts.query}&{_TIMEOUTS[backend]}" if parts.query else _TIMEOUTS[backend]
        try:
            yield Cuttable(relay, urlunsplit(parts._replace(netloc=netloc, query=query)))
        finally:
            relay.close()
