"""Prometheus metrics of what retrysafe does (extra `[prometheus]`: prometheus-client).

    from retrysafe.observe.prometheus import PrometheusObserver

    observer = PrometheusObserver()  # registers on prometheus_client's default registry
    app = IdempotencyMiddleware(app, store=store, observers=[observer])

The metrics (no key or scope in any label, so their number stays bounded):

- `retrysafe_requests_total{face, decision}`: tracked operations, by face
  (`retrysafe.observe.FACES`) and decision (`retrysafe.observe.DECISIONS`);
- `retrysafe_outcome_total{face, result}`: how executed operations ended
  (`retrysafe.observe.RESULTS`);
- `retrysafe_store_operation_seconds{operation}`: each store primitive (claim, complete,
  release, renew, get, checkpoint), a histogram; `retrysafe_store_errors_total{operation}`:
  those that raised;
- `retrysafe_wait_seconds`: the waits for a duplicate in flight (B15), a histogram;
- `retrysafe_client_attempts_total{method, status}`: the client's requests, by status class
  (`2xx` ... `5xx`, or `error` when no response came), and `retrysafe_client_retry_delay_seconds`,
  the delays it waited before retrying.

Under a multi-process server (gunicorn, uvicorn `--workers`), use prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, see docs/observability.md): these metrics are
counters and histograms only, which it aggregates.
"""

from __future__ import annotations

from typing import Any, Final

from retrysafe._extras import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
except ImportError as error:
    raise missing_extra("retrysafe.observe.prometheus", "prometheus", error) from error

from retrysafe.observe import Attempt, Observer, Operation, StoreCall

__all__ = ["PrometheusObserver"]

# Store calls take from ~10 µs (memory) to seconds (a store under strain); waits up to `wait`.
_STORE_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
_WAIT_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Each metric's name and help.
_REQUESTS: Final = ("retrysafe_requests", "Tracked operations, by face and decision.")
_OUTCOMES: Final = (
    "retrysafe_outcome",
    "How executed operations ended: stored, released, fenced, store_failed or interrupted.",
)
_STORE_SECONDS: Final = (
    "retrysafe_store_operation_seconds",
    "Time of each idempotency store primitive.",
)
_STORE_ERRORS: Final = (
    "retrysafe_store_errors",
    "Store primitives that raised (the store unavailable, a fencing).",
)
_WAIT_SECONDS: Final = (
    "retrysafe_wait_seconds",
    "Time duplicates waited for an operation in flight (B15).",
)
_CLIENT_ATTEMPTS: Final = (
    "retrysafe_client_attempts",
    "Requests the retrying client sent, by method and status class.",
)
_CLIENT_DELAYS: Final = (
    "retrysafe_client_retry_delay_seconds",
    "Delays the retrying client waited before a retry.",
)


class _Children:
    """A metric's labelled children, kept by label values: the metric's own `labels()` takes a
    lock and builds a tuple on every call."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        """Return the child of these label values, as the metric's `labels(*values)` does."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class PrometheusObserver(Observer):
    """Counts and times what retrysafe does, as Prometheus metrics.

    One observer registers its metrics once: give the same instance to every face of a process
    (a second instance on one registry raises prometheus-client's "Duplicated timeseries").

    Args:
        registry: where the metrics are registered (default: prometheus-client's `REGISTRY`,
            which `prometheus_client.start_http_server` and the framework exporters serve).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self.requests = Counter(*_REQUESTS, ("face", "decision"), registry=registry)
        self.outcomes = Counter(*_OUTCOMES, ("face", "result"), registry=registry)
        self.store_seconds = Histogram(
            *_STORE_SECONDS, ("operation",), buckets=_STORE_BUCKETS, registry=registry
        )
        self.store_errors = Counter(*_STORE_ERRORS, ("operation",), registry=registry)
        self.wait_seconds = Histogram(*_WAIT_SECONDS, buckets=_WAIT_BUCKETS, registry=registry)
        self.client_attempts = Counter(*_CLIENT_ATTEMPTS, ("method", "status"), registry=registry)
        self.client_delays = Histogram(*_CLIENT_DELAYS, buckets=_WAIT_BUCKETS, registry=registry)
        self._requests = _Children(self.requests)
        self._outcomes = _Children(self.outcomes)
        self._store_seconds = _Children(self.store_seconds)

    def decided(self, operation: Operation) -> None:
        """Count the operation by face and decision."""
        self._requests.labels(operation.face, operation.decision or "unknown").inc()

    def finished(self, operation: Operation) -> None:
        """Count how an executed operation ended."""
        self._outcomes.labels(operation.face, operation.result or "unknown").inc()

    def store_call(self, operation: Operation | None, call: StoreCall) -> None:
        """Time a store primitive; count it if it raised."""
        self._store_seconds.labels(call.name).observe(call.seconds)
        if call.error is not None:
            self.store_errors.labels(call.name).inc()

    def waited(self, operation: Operation | None, call: StoreCall) -> None:
        """Time a wait for a duplicate in flight."""
        self.wait_seconds.observe(call.seconds)

    def attempted(self, attempt: Attempt) -> None:
        """Count a client attempt; time the delay before its retry."""
        status = "error" if attempt.status is None else f"{attempt.status // 100}xx"
        self.client_attempts.labels(attempt.method, status).inc()
        if attempt.retry_in is not None:
            self.client_delays.observe(attempt.retry_in)
