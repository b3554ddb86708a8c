"""What `retrysafe proxy` gives its operator: the store check at start, `GET /metrics` and
`GET /healthz` on a port of their own, and its log lines on stderr.

The metrics port (`--metrics-port`) is served by a second uvicorn server in the proxy's
process and event loop, started and stopped with the proxy's lifespan; nothing on it shadows a
path of the upstream, and the proxied port answers neither path itself (both are forwarded).

- `GET /metrics`: Prometheus text (or OpenMetrics, if the scraper asks for it) of the registry
  the proxy's `PrometheusObserver` writes to: `retrysafe_requests_total{face="proxy",...}` and
  the rest (see `retrysafe.observe.prometheus`), with prometheus-client's process metrics.
- `GET /healthz`: 200 `{"status": "ok"}` when the store answers a `get` within 2 s, else 503
  problem+json (`store-unavailable`) saying why. The proxy itself answers while the store is
  down (fail closed), so it is a readiness check, not a liveness one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import anyio
import uvicorn
from anyio.abc import TaskGroup

from retrysafe._http import Response, Settings, problem
from retrysafe.asgi import ASGIApp, Message, Receive, Scope, Send
from retrysafe.proxy._access import ACCESS_LOGGER, printable
from retrysafe.proxy._forward import respond
from retrysafe.proxy._health import PROXY_LOGGER, StoreWatch

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from retrysafe.observe.prometheus import PrometheusObserver

__all__ = ["Operations", "OpsApp", "configure_logging", "metrics_observer"]

_STOP_SECONDS: Final = 5
_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_GET: Final = frozenset({"GET", "HEAD"})
_SETTINGS: Final = Settings()
"""Whose `problem_base_url` names `/healthz`'s problem: the default one, docs/http.md."""


class OpsApp:
    """ASGI: the metrics port, `GET /metrics` and `GET /healthz`.

    Args:
        watch: checks the store for `/healthz`.
        registry: the Prometheus registry `/metrics` serves.
    """

    def __init__(self, watch: StoreWatch, registry: CollectorRegistry) -> None:
        self.watch = watch
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer `/metrics`, `/healthz`, or 404 and 405."""
        if scope["type"] != "http":
            return  # no lifespan (the proxy's is the one), no WebSocket
        path, method = scope["path"], scope["method"]
        if path not in ("/metrics", "/healthz"):
            answer = _text(404, "Not found: this port serves GET /metrics and GET /healthz.\n")
        elif method not in _GET:
            answer = _text(405, f"{path} takes GET.\n", (b"allow", b"GET, HEAD"))
        elif path == "/metrics":
            answer = self._metrics(scope)
        else:
            answer = await self._health()
        if method == "HEAD":
            answer = Response(answer.status, answer.headers, b"")
        await respond(send, answer)

    def _metrics(self, scope: Scope) -> Response:
        from prometheus_client.exposition import choose_encoder  # noqa: PLC0415 - an extra

        accept = b",".join(v for n, v in scope["headers"] if n == b"accept").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        return _answer(200, encoder(self.registry), content_type.encode())

    async def _health(self) -> Response:
        reason = await self.watch.check()
        if reason is None:
            return _answer(200, b'{"status":"ok"}\n', b"application/json")
        return problem(
            "store-unavailable",
            _SETTINGS,
            f"The idempotency store does not answer ({reason}); keyed requests get 503.",
        )


def _answer(status: int, body: bytes, content_type: bytes, *extra: tuple[bytes, bytes]) -> Response:
    headers = (
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *extra,
    )
    return Response(status, headers, body)


def _text(status: int, text: str, *extra: tuple[bytes, bytes]) -> Response:
    return _answer(status, text.encode(), b"text/plain; charset=utf-8", *extra)


class Operations:
    """ASGI, outermost: runs the operator's side of the proxy with its lifespan.

    At startup, once the proxy is ready, it checks the store and says so in one line
    (`StoreWatch.check_at_start`), then serves `OpsApp` on `listener`, if given; at shutdown,
    once the proxy has drained and closed its store, it stops that server. Every other
    message passes straight through.

    Args:
        app: the proxy (`build_proxy`).
        watch: the store's watch, which the proxy's middleware also has as an observer.
        listener: a bound socket for the metrics port, or None for none.
        registry: the Prometheus registry `/metrics` serves (with `listener`).
        protocol: the uvicorn HTTP protocol of the metrics port: the proxy's, which bounds
            each request head (B36), else uvicorn's h11 one.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        watch: StoreWatch,
        listener: socket.socket | None = None,
        registry: CollectorRegistry | None = None,
        protocol: type[asyncio.Protocol] | None = None,
    ) -> None:
        if (listener is None) != (registry is None):
            raise ValueError("The metrics port needs both a listener and a registry.")
        self.app = app
        self.watch = watch
        self._listener = listener
        self._ops_app = None if registry is None else OpsApp(watch, registry)
        self._protocol = protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass everything on; bracket the lifespan with the store check and the side server."""
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        side = None
        if self._listener is not None and self._ops_app is not None:
            side = _Side(_side_config(self._ops_app, self._protocol), self._listener)
        async with anyio.create_task_group() as group:

            async def lifespan_send(message: Message) -> None:
                kind = message["type"]
                if kind == "lifespan.startup.complete":
                    await self.watch.check_at_start()
                    if side is not None:
                        side.start(group)
                elif kind.startswith("lifespan.shutdown.") and side is not None:
                    await side.stop(group)
                await send(message)

            await self.app(scope, receive, lifespan_send)
            if side is not None:
                await side.stop(group)  # a no-op unless the app ended without a shutdown


def _side_config(app: OpsApp, protocol: type[asyncio.Protocol] | None) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan="off",
        http=protocol or "h11",
        # No `log_config`: the proxy's server configured logging, and a second dictConfig
        # would close every handler in place.
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=_STOP_SECONDS,
    )


class _SideServer(uvicorn.Server):
    """A uvicorn server that leaves signals alone: the proxy's server takes SIGTERM and SIGINT,
    and the proxy's lifespan stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers."""
        yield


class _Side:
    """The metrics port: its server, started once and stopped once."""

    def __init__(self, config: uvicorn.Config, listener: socket.socket) -> None:
        self._server = _SideServer(config)
        self._listener = listener
        self._stopped = anyio.Event()
        self._running = False

    def start(self, group: TaskGroup) -> None:
        """Serve in the background, in `group`."""
        self._running = True
        group.start_soon(self._serve)

    async def stop(self, group: TaskGroup) -> None:
        """Stop serving, within a bound (else cancel `group`, which holds only this server)."""
        if not self._running:
            return
        self._running = False
        self._server.should_exit = True
        with anyio.move_on_after(_STOP_SECONDS * 2):
            await self._stopped.wait()
        if not self._stopped.is_set():
            group.cancel_scope.cancel()

    async def _serve(self) -> None:
        try:
            await self._server.serve(sockets=[self._listener])
        except Exception:  # the proxy goes on without its metrics port
            PROXY_LOGGER.exception("The metrics port failed")
        finally:
            self._stopped.set()


def metrics_observer() -> PrometheusObserver:
    """Return the observer whose metrics `/metrics` serves, on prometheus-client's default
    registry (so its process metrics come along). Raises `MissingExtraError` without the
    `prometheus` extra."""
    from retrysafe.observe.prometheus import PrometheusObserver  # noqa: PLC0415 - an extra

    return PrometheusObserver()


def configure_logging(*, access: bool) -> None:
    """Send the `retrysafe` loggers to stderr, one line per record, never a traceback: the
    proxy's own lines (`retrysafe.proxy`: the store check, outages and recoveries, answers cut
    short) and the access log (`retrysafe.proxy.access`, unless `access` is false) at INFO, the
    rest at WARNING. uvicorn's lines (after its `Config`, which sets up its loggers) get the
    same one-line format."""
    root = logging.getLogger("retrysafe")
    if not any(isinstance(h.formatter, _OneLineFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLineFormatter(_FORMAT))
        root.addHandler(handler)
    for name in ("uvicorn", "uvicorn.error"):
        for uvicorns in logging.getLogger(name).handlers:
            uvicorns.setFormatter(_OneLineFormatter(_FORMAT))
    # The proxy leaves an answer unfinished on purpose (its upstream broke it, or its client
    # stopped taking it) and says why in a line of its own.
    logging.getLogger("uvicorn.error").addFilter(_not_an_unfinished_answer)
    root.setLevel(logging.WARNING)
    PROXY_LOGGER.setLevel(logging.INFO)
    ACCESS_LOGGER.setLevel(logging.INFO if access else logging.WARNING)
    # The middleware logs each request's store failure with its traceback; the watch says it
    # once per outage instead.
    logging.getLogger("retrysafe.http").addFilter(_not_a_store_failure)


def _not_a_store_failure(record: logging.LogRecord) -> bool:
    """Drop the middleware's line per request while the store is down: `StoreWatch` says it
    once."""
    return getattr(record, "retrysafe_event", None) != "store_unavailable"


def _not_an_unfinished_answer(record: logging.LogRecord) -> bool:
    """Drop uvicorn's line for an answer the proxy left unfinished: it logged its own."""
    return record.msg != "ASGI callable returned without completing response."


class _OneLineFormatter(logging.Formatter):
    """A record on one line: an exception as `(Type: message)` after the message, never a
    traceback; control characters written as escapes."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record's one line."""
        error = record.exc_info[1] if record.exc_info else None
        plain = logging.makeLogRecord(record.__dict__)
        plain.exc_info = plain.exc_text = plain.stack_info = None
        line = super().format(plain)
        if error is not None:
            line += f" ({type(error).__name__}: {error})"
        return printable(line)
