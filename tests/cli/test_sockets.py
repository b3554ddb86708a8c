"""The socket every server of the command line listens on (`retrysafe._sockets.listen`)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from retrysafe._sockets import listen


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accepted_connections_send_small_writes_at_once(host: str) -> None:
    """The proxy, the console and `serve-demo` serve on it: asyncio sets TCP_NODELAY on the
    connections it accepts, so a response sent in two writes does not wait on Nagle's
    algorithm (the console and `serve-demo` listened on a socket that did not say TCP, and
    their connections kept Nagle on)."""

    async def main() -> int:
        seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listen(host, 0))
        async with server:
            port = server.sockets[0].getsockname()[1]
            _, writer = await asyncio.open_connection(host, port)
            nodelay = await asyncio.wait_for(seen, 5)
            writer.close()
            return nodelay

    assert asyncio.run(main()) != 0
