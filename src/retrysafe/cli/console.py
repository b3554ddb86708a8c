"""`retrysafe console`: serve the operator's web console over a store (`retrysafe.console`).

It binds to 127.0.0.1 unless told otherwise, and every page and API call needs the bearer token:
one generated at start and printed in the login URL, or the one in `--token-file`, which is
then never printed (and a warning is, if other users may read the file). The access log is
off, since a login URL carries the token.
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
from retrysafe.cli._serving import GracefulServer, listening
from retrysafe.cli._stores import existing_store
from retrysafe.cli.keys import StoreOption

__all__ = ["DEFAULT_PORT", "EXAMPLES", "read_token", "serve_console"]

DEFAULT_PORT: Final = 8765
_TOKEN: Final = re.compile(r"[\x21-\x7e]{16,}")  # visible ASCII: it goes in a header and a URL

EXAMPLES = """\
Examples:

  retrysafe console --store sqlite:///retrysafe.db

  (umask 077; python -c 'import secrets; print(secrets.token_urlsafe(32))' > console.token)

  retrysafe console --store postgresql://app@db/app --port 9000 --token-file console.token

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
) -> None:
    """Serve the web console: records by namespace and state, stuck leases, one record in full,
    delete and purge behind a confirmation, and the JSON API the pages are made from.

    Every page and API call needs the token (401 without it); state changes are POSTs refused
    from other sites. Ctrl+C (or SIGTERM) stops it, with exit status 0.
    """
    token = secrets.token_urlsafe(32) if token_file is None else read_token(token_file)
    with errors_as_one_line():
        sock = listening(host, port)
        try:
            with existing_store(store_url) as store:
                from retrysafe.console import create_app  # noqa: PLC0415 - it imports this package

                server = _server(create_app(store, token))
                server.keep_interrupts()  # from here, Ctrl+C stops it gracefully (exit 0)
                _announce(sock, store_url, token if token_file is None else None, host)
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


def _announce(sock: socket.socket, store_url: str, token: str | None, host: str) -> None:
    address, port = sock.getsockname()[:2]
    shown = f"[{address}]" if ":" in address else address
    base = f"http://{shown}:{port}/"
    login = (
        f"{base}?token={token}" if token is not None else f"{base}?token=<the token in the file>"
    )
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


def _server(app: ASGIApp) -> GracefulServer:
    config = uvicorn.Config(
        app,
        interface="asgi3",
        lifespan="off",
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return GracefulServer(config)
