"""`retrysafe console`: serve the operator's web console over a store (`retrysafe.console`).

It binds to 127.0.0.1 unless told otherwise, and every page and API call needs the bearer token:
one generated at start and printed in the login URL, or the one in `--token-file`, which is
then never printed (and a warning is, if other users may read the file). The access log is
off, since a login URL carries the token. A client must send each request head within
HEAD_TIMEOUT seconds, or its connection is closed (a slowloris locks no one out).
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Annotated, Final

import anyio
import typer
import uvicorn
from starlette.types import ASGIApp

from retrysafe._urls import redact_url
from retrysafe.cli._common import (
    EXIT_USAGE,
    console,
    errors_as_one_line,
    fail,
    literal,
    warn,
    warnings_to_stderr,
)
from retrysafe.cli._head_timeout import HeadTimeoutProtocol
from retrysafe.cli._serving import GracefulServer, listening
from retrysafe.cli._stores import existing_store
from retrysafe.cli.keys import StoreOption

__all__ = [
    "DEFAULT_PORT",
    "EXAMPLES",
    "HEAD_TIMEOUT",
    "console_config",
    "read_token",
    "serve_console",
]

DEFAULT_PORT: Final = 8765
HEAD_TIMEOUT: Final = 10.0
"""Seconds a client has to send a request head (from its connection, or its last response)."""
_TOKEN: Final = re.compile(r"[\x21-\x7e]{16,}")  # visible ASCII: it goes in a header and a URL

EXAMPLES = """\
Examples:

  retrysafe console --store sqlite:///retrysafe.db

  (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(32))' > console.token)

  retrysafe console --store postgresql://app@db/app --port 9000 --token-file console.token

  retrysafe console --store redis://cache:6379/0 --token-file console.token \
      --public-origin https://console.example   # behind a TLS terminator

Then open the printed URL (it logs the browser in), or call the JSON API:

  curl -H "Authorization: Bearer $(cat console.token)" localhost:9000/api/summary
"""


def serve_console(
    store_url: StoreOption,
    host: Annotated[
        str, typer.Option("--host", help="The address to listen on (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="The port to listen on (0: any).")
    ] = DEFAULT_PORT,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            metavar="PATH",
            help="Read the bearer token from this file (at least 16 visible ASCII characters) "
            "instead of generating one and printing it.",
        ),
    ] = None,
    public_origin: Annotated[
        str | None,
        typer.Option(
            "--public-origin",
            metavar="URL",
            help="The origin browsers open the console at, behind a TLS terminator or a proxy "
            "that rewrites Host (https://console.example): the only origin a POST may come "
            "from; https makes the session cookie Secure.",
        ),
    ] = None,
) -> None:
    """Serve the web console: records by namespace and state, stuck leases, one record in full,
    delete and purge behind a confirmation, and the JSON API the pages are made from.

    Every page and API call needs the token (401 without it); state changes are POSTs refused
    from other sites. Ctrl+C (or SIGTERM) stops it, with exit status 0.
    """
    token = secrets.token_urlsafe(32) if token_file is None else read_token(token_file)
    origin = None if public_origin is None else _origin(public_origin)
    with errors_as_one_line():
        sock = listening(host, port)
        try:
            with existing_store(store_url) as store:
                from retrysafe.console import create_app  # noqa: PLC0415 - it imports this package

                app = create_app(store, token, public_origin=origin)
                server = GracefulServer(console_config(app))
                server.keep_interrupts()  # from here, Ctrl+C stops it gracefully (exit 0)
                shown = token if token_file is None else None
                _announce(sock, store_url, shown, host, origin)
                with warnings_to_stderr("retrysafe.console", "%(levelname)s: %(message)s"):
                    anyio.run(server.serve, [sock])  # a page that failed logs why
        finally:
            sock.close()


def read_token(path: Path) -> str:
    """Return the token in `path` (surrounding whitespace ignored); fail (exit 2) if unfit,
    and warn if users other than its owner may read it (they could use the console too)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        mode = stat.S_IMODE(path.stat().st_mode)
    except (OSError, UnicodeDecodeError) as error:
        fail(
            f"cannot read the token file {path}: {getattr(error, 'strerror', None) or error}",
            EXIT_USAGE,
        )
    if not _TOKEN.fullmatch(token):
        fail(
            f"the token in {path} must be at least 16 visible ASCII characters, no spaces "
            "(python -c 'import secrets; print(secrets.token_urlsafe(32))' makes one).",
            EXIT_USAGE,
        )
    if os.name == "posix" and mode & 0o077:
        warn(
            f"the token file {path} may be read by other users (mode {mode:04o}): anyone who "
            f"reads it can use the console. Run: chmod 600 {path}"
        )
    return token


def _origin(url: str) -> str:
    """Return the origin `--public-origin` gives, or fail (exit 2) saying why it is none."""
    from retrysafe.console._auth import origin_of  # noqa: PLC0415 - it imports this package

    try:
        return origin_of(url)
    except ValueError as error:
        fail(f"--public-origin: {error}", EXIT_USAGE)


def _announce(
    sock: socket.socket, store_url: str, token: str | None, host: str, public: str | None
) -> None:
    address, port = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    base = f"http://{shown}:{port}/"
    opened = base if public is None else f"{public}/"
    login = f"{opened}?token={token if token is not None else '<the token in the file>'}"
    console.print(
        literal(
            f"retrysafe console on {base} (store {redact_url(store_url)}). "
            f"Open {login} to log in. Ctrl+C stops it."
        ),
        soft_wrap=True,
    )
    if not _loopback(host):
        warn(
            f"listening on {host}: the token travels in clear over plain HTTP; "
            "put TLS in front of it beyond this machine."
        )


def _loopback(host: str) -> bool:
    """Whether `host` is a loopback address (any of 127.0.0.0/8, ::1) or `localhost`."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def console_config(app: ASGIApp, *, head_timeout: float = HEAD_TIMEOUT) -> uvicorn.Config:
    """Return the uvicorn configuration `retrysafe console` serves `app` with: no access log,
    and each request head due within `head_timeout` seconds.

    No `limit_concurrency`: uvicorn counts open connections toward it, so idle ones would
    turn the operator's own requests into 503s. A request's body is bounded by the app.
    """
    return uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        log_level="info",
        access_log=False,
        http=HeadTimeoutProtocol.bounded(head_timeout),
        timeout_graceful_shutdown=5,
    )
