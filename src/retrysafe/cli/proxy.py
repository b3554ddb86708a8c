"""`retrysafe proxy`: the idempotency middleware in front of any HTTP service, on uvicorn."""

from __future__ import annotations

import gc
import math
import socket
from http import HTTPStatus
from typing import Annotated, Literal

import h11
import typer
import uvicorn

from retrysafe._errors import ConfigurationError
from retrysafe._extras import MissingExtraError
from retrysafe._http import MIB, SettingsOptions
from retrysafe._sockets import listen
from retrysafe._urls import redact_url
from retrysafe.cli._common import EXIT_USAGE, console, errors_as_one_line, fail
from retrysafe.cli._head_timeout import HeadTimeoutProtocol
from retrysafe.cli._serving import GracefulServer
from retrysafe.proxy import build_proxy
from retrysafe.proxy._forward import DEFAULT_DEADLINE, DEFAULT_TIMEOUT
from retrysafe.proxy._framing import MAX_HEAD_SIZE, invalid_framing
from retrysafe.proxy._guard import DEFAULT_BODY_TIMEOUT
from retrysafe.proxy._health import StoreWatch
from retrysafe.proxy._ops import Operations, configure_logging, metrics_observer
from retrysafe.stores import open_async_store
from retrysafe.stores._closing import closed_on_error

__all__ = ["EXAMPLES", "proxy", "register"]

_STORING = 10
"""Seconds a shutdown gives the last outcomes to be stored, past the requests' own bounds."""

EXAMPLES = """\
Examples:

    retrysafe proxy --upstream http://127.0.0.1:3000

    retrysafe proxy --upstream http://api.internal:8000 --port 8080 \\
        --store redis://cache:6379/0 --require-key --wait 0 --scope-header X-API-Key

    RETRYSAFE_SCOPE_SECRET=... retrysafe proxy --upstream http://127.0.0.1:3000 \
        --anonymous shared

    retrysafe proxy --upstream http://127.0.0.1:3000 --host 0.0.0.0 --metrics-port 9464
"""


def proxy(
    *,
    upstream: Annotated[
        str,
        typer.Option("--upstream", metavar="URL", help="The HTTP service to put behind the proxy."),
    ],
    host: Annotated[str, typer.Option("--host", help="The address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="The port to listen on (0: any free one; the line printed at start names it).",
        ),
    ] = 8080,
    store: Annotated[
        str,
        typer.Option(
            "--store",
            metavar="URL",
            help="The idempotency store: memory://, sqlite:///file.db, postgresql://..., "
            "mysql://..., redis://..., redis+cluster://host:port,... (default: retrysafe.db "
            "here).",
        ),
    ] = "sqlite:///retrysafe.db",
    namespace: Annotated[
        str,
        typer.Option(
            "--namespace",
            metavar="NAME",
            help="Keeps this proxy's keys apart from other users of the same store: give each "
            "service its own (default: http, as before).",
        ),
    ] = "http",
    require_key: Annotated[
        bool, typer.Option("--require-key", help="Answer 400 to a POST or PATCH without a key.")
    ] = False,
    retention: Annotated[
        float,
        typer.Option("--retention", metavar="SECONDS", help="How long outcomes are replayed."),
    ] = 86400.0,
    lease: Annotated[
        float,
        typer.Option(
            "--lease",
            metavar="SECONDS",
            help="How long a claim holds its key without renewal (renewed while upstream works).",
        ),
    ] = 30.0,
    wait: Annotated[
        float,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            help="How long a duplicate in flight waits for the outcome (0: 409 at once).",
        ),
    ] = 10.0,
    scope_header: Annotated[
        str | None,
        typer.Option(
            "--scope-header",
            metavar="NAME",
            help="Scope keys by this request header (default: Authorization).",
        ),
    ] = None,
    anonymous: Annotated[
        Literal["reject", "shared"],
        typer.Option(
            "--anonymous",
            help="A keyed request without the scope header: reject it (400 scope-missing) "
            "or let all such requests share one anonymous scope.",
        ),
    ] = "reject",
    upstream_timeout: Annotated[
        float,
        typer.Option(
            "--upstream-timeout",
            metavar="SECONDS",
            help="How long a client waits for the upstream's answer before a 504; a keyed "
            "request's call goes on and its answer is stored for the retry.",
        ),
    ] = DEFAULT_TIMEOUT,
    upstream_deadline: Annotated[
        float,
        typer.Option(
            "--upstream-deadline",
            metavar="SECONDS",
            help="How long a keyed request's upstream call may run in all; past it, retries "
            "get the outcome-unknown problem and the request is never forwarded again.",
        ),
    ] = DEFAULT_DEADLINE,
    max_in_flight_per_scope: Annotated[
        int | None,
        typer.Option(
            "--max-in-flight-per-scope",
            metavar="N",
            min=1,
            help="The most keys one caller may have running at once; beyond it, 429 with "
            "Retry-After (default: no cap).",
        ),
    ] = None,
    max_body_size: Annotated[
        int,
        typer.Option(
            "--max-body-size", metavar="BYTES", min=0, help="The largest request body (413)."
        ),
    ] = MIB,
    max_response_size: Annotated[
        int,
        typer.Option(
            "--max-response-size",
            metavar="BYTES",
            min=0,
            help="The largest response stored for replay; a larger one is streamed once and "
            "its retries get the not-replayable problem.",
        ),
    ] = MIB,
    body_timeout: Annotated[
        float,
        typer.Option(
            "--body-timeout",
            metavar="SECONDS",
            help="How long a request's head, then its body, may take to arrive (the head: "
            "the connection is closed; the body: 408; nothing is forwarded).",
        ),
    ] = DEFAULT_BODY_TIMEOUT,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve Prometheus metrics at /metrics and a health check at /healthz on this "
            "port of --host (never on the proxied port; 0: any free one). Needs the prometheus "
            "extra.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No access log (one line per request on stderr).")
    ] = False,
) -> None:
    """Put the idempotency middleware in front of any HTTP service.

    POST and PATCH requests with an Idempotency-Key reach the upstream once; retries get the
    first response again, marked Idempotent-Replayed: true. Keys are scoped by the caller's
    credential header, hashed with the secret in RETRYSAFE_SCOPE_SECRET (else one kept in the
    store). Ctrl+C (or SIGTERM) stops it gracefully, with exit status 0.
    """
    if metrics_port == port and port != 0:
        fail(f"--metrics-port {port} is the proxied --port: give it another one.", EXIT_USAGE)
    with errors_as_one_line():
        try:
            options: SettingsOptions = {
                "namespace": namespace,
                "required": require_key,
                "retention": retention,
                "lease": lease,
                "wait": wait,
                "anonymous": anonymous,
                "max_in_flight_per_scope": max_in_flight_per_scope,
                "max_body_size": max_body_size,
                "max_response_size": max_response_size,
            }
            if scope_header is not None:  # checked by build_proxy: "" or "bad:name" is an error
                options["scope_header"] = scope_header
            metrics = None if metrics_port is None else metrics_observer()
            async_store = open_async_store(store)
            watch = StoreWatch(async_store)
            app = build_proxy(
                upstream,
                store=async_store,
                timeout=upstream_timeout,
                deadline=upstream_deadline,
                body_timeout=body_timeout,
                observers=[watch] if metrics is None else [watch, metrics],
                access_log=not quiet,
                **options,
            )
        except (ConfigurationError, MissingExtraError) as error:
            fail(str(error), EXIT_USAGE)
        # Both ports are bound before anything is served, so one in use is one line, exit 1.
        sock = _bound(host, port, "")
        listener = None
        if metrics_port is not None:
            with closed_on_error(sock):
                listener = _bound(host, metrics_port, "--metrics-port: ")
    operated = Operations(
        app,
        watch=watch,
        listener=listener,
        registry=metrics.registry if metrics else None,
        protocol=HeadTimeoutProtocol.bounded(body_timeout),  # the metrics port's heads too
    )
    config = uvicorn.Config(
        operated,
        lifespan="on",
        log_level="warning",
        access_log=False,
        http=FramingProtocol.bounded(body_timeout),
        # A head still arriving may hold this much (uvicorn's default, said in docs/proxy.md):
        # past it, the invalid-framing problem.
        h11_max_incomplete_event_size=MAX_HEAD_SIZE,
        proxy_headers=False,  # the proxy is the edge: it appends to X-Forwarded-For itself
        # A request that came before the signal takes up to --body-timeout to arrive, then
        # --upstream-deadline upstream, then its outcome is stored: past that, what still runs
        # (a response streaming on and on) is cancelled, and the proxy exits (B40).
        timeout_graceful_shutdown=math.ceil(body_timeout + upstream_deadline) + _STORING,
        server_header=False,  # the upstream's Server and Date headers pass through
        date_header=False,
    )
    configure_logging(access=not quiet)  # after uvicorn's Config, which configures its own
    server = GracefulServer(config)
    server.keep_interrupts()  # from here, Ctrl+C stops the proxy gracefully (exit 0)
    # What start-up made lives as long as the process: keep it out of every collection, so
    # that full collections stay short (p99 of first-time requests on Redis: 22 ms to 8 ms,
    # docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    metrics_url = "" if listener is None else f", metrics {_address(listener)}/metrics"
    console.print(
        f"retrysafe proxy: {_address(sock)} -> {redact_url(upstream)} "
        f"(store {redact_url(store)})" + metrics_url,
        markup=False,
        soft_wrap=True,
    )
    server.run(sockets=[sock])


def _address(sock: socket.socket) -> str:
    """Return the URL of what `sock` listens on, with the port it was given (for --port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _bound(host: str, port: int, option: str) -> socket.socket:
    """Return a listening socket on (host, port), or fail with one line and exit 1."""
    try:
        return listen(host, port)
    except OSError as error:
        fail(f"{option}cannot listen on {host}:{port}: {error.strerror or error}")


class FramingProtocol(HeadTimeoutProtocol):
    """The shared protocol that bounds each request head and a stalled response (B36, B40),
    where a request that h11 cannot parse gets the `invalid-framing` problem, not uvicorn's
    plain text (B24). The body's pace is `RequestGuard`'s."""

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 refused (a Transfer-Encoding other than one `chunked`, two
        Content-Lengths, a malformed head or chunk) with the invalid-framing problem, and close
        the connection: its next byte cannot be trusted (B24, B37)."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()  # a response is under way: it cannot be replaced
            return
        problem = invalid_framing(
            "The request is not HTTP/1.1 the proxy can parse (RFC 9112): frame a body with one "
            "Content-Length or with Transfer-Encoding: chunked alone, and send a well-formed "
            f"request head of at most {MAX_HEAD_SIZE} bytes."
        )
        reason = HTTPStatus(problem.status).phrase.encode()
        head = h11.Response(
            status_code=problem.status, headers=list(problem.headers), reason=reason
        )
        for event in (head, h11.Data(data=problem.body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


def register(app: typer.Typer) -> None:
    """Add `retrysafe proxy` to the CLI."""
    app.command("proxy", epilog=EXAMPLES)(proxy)
