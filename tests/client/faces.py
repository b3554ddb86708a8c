"""The three client faces behind one small sync interface, so each scenario runs on all three.

`sync` is `httpx.Client` + `IdempotentTransport`, `async` is `httpx.AsyncClient` +
`AsyncIdempotentTransport` (run with `anyio.run`), `requests` is a `requests.Session` with
`IdempotentAdapter` mounted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import requests

from retrysafe.client import (
    AsyncIdempotentTransport,
    IdempotentAdapter,
    IdempotentTransport,
    RetryHook,
    RetryPolicy,
    is_replay,
)
from retrysafe.observe import Observer
from tests.client.conftest import Sleeps

FACES = ("sync", "async", "requests")


@dataclass(frozen=True)
class Outcome:
    """What a face got back."""

    status: int
    body: bytes
    replayed: bool
    headers: dict[str, str]


@dataclass
class Face:
    """One client face with its injected sleep and clock."""

    name: str
    policy: RetryPolicy
    sleeps: Sleeps | None
    hooks: Sequence[RetryHook] = ()
    observers: Sequence[Observer] = ()

    def _options(self, *, sync: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "policy": self.policy,
            "on_retry": self.hooks,
            "observers": self.observers,
        }
        if self.sleeps is not None:
            options["clock"] = self.sleeps.clock
            options["sleep"] = self.sleeps if sync else self.sleeps.asleep
        return options

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        chunks: list[bytes] | None = None,
        timeout: float = 10.0,
        stream: bool = False,
        follow_redirects: bool | None = None,
    ) -> Outcome:
        """Send one logical request; `chunks` sends a body that cannot be replayed; `stream`
        reads the answer as `client.stream(...)` (requests: `stream=True`) does;
        `follow_redirects` None keeps each library's default (httpx: no, requests: yes)."""
        follow = bool(follow_redirects)
        if self.name == "sync":
            body: Any = content if chunks is None else iter_chunks(chunks)
            transport = IdempotentTransport(**self._options(sync=True))
            with httpx.Client(transport=transport, follow_redirects=follow) as c:
                if not stream:
                    r = c.request(method, url, headers=headers, content=body, timeout=timeout)
                    return _from_httpx(r)
                with c.stream(method, url, headers=headers, content=body, timeout=timeout) as r:
                    r.read()
                    return _from_httpx(r)
        if self.name == "async":

            async def send() -> Outcome:
                body: Any = content if chunks is None else aiter_chunks(chunks)
                transport = AsyncIdempotentTransport(**self._options(sync=False))
                options: dict[str, Any] = {"headers": headers, "content": body, "timeout": timeout}
                async with httpx.AsyncClient(transport=transport, follow_redirects=follow) as c:
                    if not stream:
                        return _from_httpx(await c.request(method, url, **options))
                    async with c.stream(method, url, **options) as r:
                        await r.aread()
                        return _from_httpx(r)

            return anyio.run(send)
        with requests.Session() as session:
            session.mount("http://", IdempotentAdapter(**self._options(sync=True)))
            data: Any = content if chunks is None else iter_chunks(chunks)
            r = session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=timeout,
                stream=stream,
                allow_redirects=follow_redirects is not False,
            )
            return Outcome(r.status_code, r.content, is_replay(r), dict(r.headers))


def _from_httpx(response: httpx.Response) -> Outcome:
    replayed = response.extensions["idempotent_replayed"]
    return Outcome(response.status_code, response.content, replayed, dict(response.headers))


def iter_chunks(chunks: list[bytes]) -> Iterator[bytes]:
    """A generator body: it can be sent once only."""
    yield from chunks


async def aiter_chunks(chunks: list[bytes]) -> AsyncIterator[bytes]:
    """An async generator body: it can be sent once only."""
    for chunk in chunks:
        yield chunk
