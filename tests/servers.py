"""Real servers for tests: uvicorn serving an ASGI app from a thread, on a free loopback port."""

from __future__ import annotations

import asyncio
import atexit
import re
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any

import uvicorn

__all__ = ["AsgiServer", "announced", "refused_port", "wait_for_port"]

_START_SECONDS = 10.0


_HELD: list[socket.socket] = []


@atexit.register
def _let_go() -> None:
    """Close the held ports as the process ends (unclosed, each would warn)."""
    for sock in _HELD:
        sock.close()


def refused_port() -> int:
    """Return a loopback port that refuses connections for as long as this process runs.

    The port stays bound, never listening, so a connection to it is refused at once and no
    other process can take it meanwhile (a port found free and let go could be).
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    return int(sock.getsockname()[1])


def wait_for_port(
    port: int, seconds: float = 15.0, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until something accepts connections on loopback `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError(f"the server for port {port} exited")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port}")


def announced_listener(port_file: Path) -> socket.socket:
    """Return a listening socket on a loopback port of its own, its port written to `port_file`
    (whole, by a rename) for `wait_for_port_file`: for a server run as a process of its own."""
    listener = socket.create_server(("127.0.0.1", 0))
    written = port_file.with_suffix(".tmp")
    written.write_text(str(listener.getsockname()[1]))
    written.replace(port_file)
    return listener


def wait_for_port_file(
    port_file: Path, seconds: float, alive: Callable[[], bool] | None = None
) -> int:
    """Wait until a server process writes the port it listens on to `port_file`
    (`announced_listener`); return it. A server that binds a port of its own and says which
    cannot be confused with another that took a port chosen for it before it started."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return int(port_file.read_text())
        except FileNotFoundError:
            pass
        if alive is not None and not alive():
            raise RuntimeError(f"the server for {port_file.name} exited")
        time.sleep(0.02)
    raise RuntimeError(f"no server wrote {port_file.name} within {seconds} s")


def announced(stdout: IO[bytes] | IO[str], pattern: str, seconds: float) -> re.Match[str]:
    """Read a server process's stdout until a line matches `pattern`; return the match.

    For a CLI server started with `--port 0`: it binds a port of its own and prints it, so the
    test cannot reach another process that took a port chosen for it beforehand. Lines are read
    by a thread (a line the stream has buffered is never waited for), and bounded by `seconds`;
    the process's end (stdout closed) fails at once, with what it printed.
    """
    printed: list[str] = []
    found: list[re.Match[str]] = []
    done = threading.Event()

    def read() -> None:
        try:
            while line := stdout.readline():
                text = line if isinstance(line, str) else line.decode(errors="replace")
                printed.append(text)
                if (match := re.search(pattern, text)) is not None:
                    found.append(match)
                    return
        finally:
            done.set()

    threading.Thread(target=read, daemon=True, name="announced").start()
    if not done.wait(seconds):
        raise RuntimeError(f"no line matched {pattern!r} within {seconds} s; printed: {printed!r}")
    if not found:
        raise RuntimeError(f"the server exited; it printed: {printed!r}")
    return found[0]


class AsgiServer:
    """uvicorn serving an ASGI app from a thread, on its own event loop; started at once.

    Args:
        app: the ASGI app.
        lifespan: uvicorn's lifespan mode ("off", "on", "auto").
        on_close: a coroutine function run on the server's loop after it stops serving.
    """

    def __init__(
        self,
        app: Any,
        *,
        lifespan: str = "off",
        on_close: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the
        # listening socket says TCP; without it every response body waits 40 ms (Nagle).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            interface="asgi3",
            log_level="critical",
            access_log=False,
            ws="none",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._on_close = on_close
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="uvicorn")
        self._thread.start()
        deadline = time.monotonic() + _START_SECONDS
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            try:
                await self._server.serve(sockets=[self._sock])
            finally:
                if self._on_close is not None:
                    await self._on_close()

        asyncio.run(main())

    def call(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` on the server's loop (where its async store lives); return its result."""
        if self.loop is None:
            raise RuntimeError("the server's loop is not running")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def open_connections(self) -> int:
        """Return how many client connections uvicorn holds open (a closed one is gone once
        uvicorn has seen it close, and told the request's app)."""
        return len(self._server.server_state.connections)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
