"""Sending the upstream's response to the client: whole when it fit the buffer, else streamed.

A streamed response that the upstream breaks aborts the client's connection
(`UpstreamBrokeError`). One whose client leaves (`http.disconnect`) is given up at once, and
one whose client stops taking it once a part has waited `stall` seconds, as if it had left:
else the proxy would read the upstream's answer to its end (for ever, for one that never
ends) and hold its request's key, and the server's graceful shutdown, all along. Behind the
middleware, a response left unfinished either way keeps the "response not stored" outcome: its
status went out, so the upstream acted (B22, B40).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

import anyio
import httpx

from retrysafe.asgi import Message, Receive, Send
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


async def relay(
    fetched: Fetched, send: Send, *, stall: float, receive: Receive | None
) -> Literal["sent", "left", "stalled"]:
    """Send the upstream's response; give a streamed one up if the client takes none of a
    part within `stall` seconds (`stalled`), or leaves (`left`: `receive` heard
    `http.disconnect`; None: not watched)."""
    response = fetched.response
    headers = response_headers(response.status_code, response.headers.raw)
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if fetched.rest is None:
        body = b"".join(fetched.chunks)
        await send({"type": "http.response.body", "body": body, "more_body": False})
        return "sent"
    broke: BaseException | None = None
    sent = False
    async with anyio.create_task_group() as group:
        streaming = anyio.CancelScope()
        if receive is not None:
            group.start_soon(_cancel_on_disconnect, receive, streaming)
        with streaming:
            try:
                sent = await _stream(fetched.chunks, fetched.rest, send, stall)
            except (httpx.HTTPError, httpx.StreamError) as error:
                broke = error
        group.cancel_scope.cancel()
    if broke is not None:
        raise UpstreamBrokeError(f"the upstream broke its response: {broke!r}") from broke
    if streaming.cancel_called:
        return "left"
    if not sent:
        return "stalled"
    # Outside the watch: cancelling the last message could cut the middleware's store call.
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return "sent"


async def _stream(
    chunks: list[bytes], rest: AsyncIterator[bytes], send: Send, stall: float
) -> bool:
    """Send the body but its last message; False if a part waited `stall` seconds."""
    for chunk in chunks:
        if not await _sent_in_time(send, chunk, stall):
            return False
    async for chunk in rest:
        if chunk and not await _sent_in_time(send, chunk, stall):
            return False
    # An empty part last: it waits, within the bound, until the client took what was sent, so
    # the last message, which the middleware stores the outcome at, is not held up by it.
    return await _sent_in_time(send, b"", stall)


async def _cancel_on_disconnect(receive: Receive, streaming: anyio.CancelScope) -> None:
    """Cancel `streaming` once the client has left: the server's `send` would go on taking
    the body and dropping it."""
    while (await receive())["type"] != "http.disconnect":
        pass
    streaming.cancel()


async def _sent_in_time(send: Send, chunk: bytes, stall: float) -> bool:
    """Send a part of the body; False if it waited `stall` seconds for the client. Only
    parts are bounded: cancelling the last message could cut the middleware's store call."""
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": True}
    with anyio.move_on_after(stall):
        await send(message)
        return True
    return False
