"""Servers for the client tests: a scripted ASGI app on uvicorn, and the relay in front of it.

The scripted app answers each named script's requests in order (the last answer repeats) and
records what it received, so a test can check the key, the body and the number of attempts
the server really saw.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from retrysafe import ManualClock
from retrysafe.demo._relay import serve_asgi

HANG = -1
"""A scripted status that answers nothing until the client hangs up (at most 10 s)."""


@dataclass(frozen=True)
class Answer:
    """One scripted response."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    headers: dict[str, str]
    body: bytes

    @property
    def key(self) -> str | None:
        """The Idempotency-Key header, or None."""
        return self.headers.get("idempotency-key")


@dataclass
class Script:
    """The answers of one script and the requests it received."""

    answers: list[Answer]
    seen: list[Seen] = field(default_factory=list)


class ScriptedApp:
    """An ASGI app that answers `/s/<name>` from the script registered under <name>."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Answer one request from its script."""
        if scope["type"] != "http":
            return
        script = self.scripts[scope["path"].rsplit("/", 1)[-1]]
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        script.seen.append(Seen(scope["method"], headers, b"".join(chunks)))
        answer = script.answers[min(len(script.seen), len(script.answers)) - 1]
        if answer.status == HANG:
            with anyio.move_on_after(10):
                while (await receive())["type"] != "http.disconnect":
                    pass
            return
        raw = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        await send({"type": "http.response.body", "body": answer.body})


@dataclass
class Scripted:
    """The running scripted server."""

    app: ScriptedApp
    base_url: str

    def script(self, *answers: Answer) -> tuple[str, Script]:
        """Register a script; return its URL and the script (to read what was seen)."""
        name = secrets.token_hex(6)
        script = Script(list(answers))
        self.app.scripts[name] = script
        return f"{self.base_url}/s/{name}", script


@pytest.fixture(scope="session")
def scripted() -> Iterator[Scripted]:
    """The scripted app served by uvicorn on a loopback port for the whole session."""
    app = ScriptedApp()
    with serve_asgi(app, lifespan="off") as url:
        yield Scripted(app, url)


class Sleeps:
    """An injected sleep: records each delay and moves a manual clock, never waits."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        """Record and 'sleep' `seconds`."""
        self.delays.append(seconds)
        self.clock.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """The async face of `__call__`."""
        self(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    """A fresh injected sleep with its manual clock."""
    return Sleeps()
