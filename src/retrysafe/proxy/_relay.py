"""Sending the upstream's response to the client: whole when it fit the buffer, else streamed.

A streamed response that the upstream breaks aborts the client's connection
(`UpstreamBrokeError`). One whose client stops taking it is given up once a part has waited
`stall` seconds, as if the client had left: a client that never reads would otherwise hold its
request's key, and the server's graceful shutdown, for as long as it keeps its connection.
Behind the middleware, a response left unfinished either way keeps the "response not stored"
outcome: its status went out, so the upstream acted (B22, B40).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx

from retrysafe.asgi import Message, Send
from retrysafe.proxy._framing import response_headers

__all__ = ["Fetched", "UpstreamBrokeError", "relay"]


class UpstreamBrokeError(Exception):
    """The upstream's response broke after its first bytes reached the client: abort it."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """An upstream response: its head, the body read so far, and the rest unless complete."""

    response: httpx.Response
    chunks: list[bytes]
    rest: AsyncIterator[bytes] | None


async def relay(fetched: Fetched, send: Send, *, stall: float) -> None:
    """Send the upstream's response; give a streamed one up if the client takes none of a
    part within `stall` seconds."""
    response = fetched.response
    headers = response_headers(response.status_code, response.headers.raw)
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if fetched.rest is None:
        body = b"".join(fetched.chunks)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return
    for chunk in fetched.chunks:
        if not await _sent_in_time(send, chunk, stall):
            return
    try:
        async for chunk in fetched.rest:
            if chunk and not await _sent_in_time(send, chunk, stall):
                return
    except (httpx.HTTPError, httpx.StreamError) as error:
        raise UpstreamBrokeError(f"the upstream broke its response: {error!r}") from error
    # An empty part first: it waits, within the bound, until the client took what was sent, so
    # the last message, which the middleware stores the outcome at, is not held up by it.
    if await _sent_in_time(send, b"", stall):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _sent_in_time(send: Send, chunk: bytes, stall: float) -> bool:
    """Send a part of the body; False if it waited `stall` seconds for the client. Only
    parts are bounded: cancelling the last message could cut the middleware's store call."""
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": True}
    with anyio.move_on_after(stall):
        await send(message)
        return True
    return False
