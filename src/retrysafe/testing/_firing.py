"""Fire N duplicates at once: real threads for sync targets, real tasks for async ones.

A duplicate is one call of a zero-argument callable that returns its outcome as a string
(`"201"`, `"returned"`); an exception becomes `"raised NAME: message"`, so a failing duplicate
is reported, not re-raised in the middle of the others.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio

from retrysafe._errors import ConfigurationError
from retrysafe.testing._report import UNFINISHED, HTTPRequest

if TYPE_CHECKING:
    import httpx

__all__ = ["Interface", "Plan", "fire_tasks", "fire_threads"]

Interface = Literal["asgi", "wsgi", "function"]
"""What `assert_runs_once` fires at: an ASGI app, a WSGI app, or a function."""

NOT_FINISHED = UNFINISHED


def _raised(error: BaseException) -> str:
    return f"raised {type(error).__name__}: {error}"


def is_async(target: object) -> bool:
    """Whether calling `target` returns a coroutine (an async function or an ASGI app)."""
    call = getattr(target, "__call__", None)  # noqa: B004 - an ASGI app is any object with an async __call__
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)


def _label(response: httpx.Response) -> str:
    replayed = response.headers.get("idempotent-replayed", "").lower() == "true"
    return f"{response.status_code}{' replayed' if replayed else ''}"


def _send_args(request: HTTPRequest, key: str) -> dict[str, object]:
    headers = {**request.headers, request.key_header: key}
    return {"json": request.json, "content": request.content, "headers": headers}


@dataclass(frozen=True, slots=True)
class Plan:
    """One check: what to call, how, with which key."""

    target: object
    interface: Interface
    request: HTTPRequest | None
    args: Sequence[object]
    kwargs: Mapping[str, object]
    duplicates: int
    key: str | None

    @classmethod
    def make(
        cls,
        target: object,
        *,
        request: HTTPRequest | None,
        args: Sequence[object],
        kwargs: Mapping[str, object] | None,
        duplicates: int,
        interface: Interface | None,
    ) -> Plan:
        """Check the arguments and settle the interface (from `request` and the target)."""
        if duplicates < 2:
            raise ConfigurationError(f"duplicates must be at least 2, not {duplicates}.")
        if not callable(target):
            raise ConfigurationError(f"assert_runs_once needs a callable target, not {target!r}.")
        if interface is None:
            http: Interface = "asgi" if is_async(target) else "wsgi"
            interface = "function" if request is None else http
        if (interface == "function") != (request is None):
            raise ConfigurationError(
                "pass request=HTTPRequest(...) for an ASGI or WSGI app, and args/kwargs (no"
                f" request) for a function; got interface={interface!r}, request={request!r}."
            )
        if request is not None and (args or kwargs):
            raise ConfigurationError("args and kwargs are for functions, not for HTTP apps.")
        key = None if request is None else (request.key or uuid.uuid4().hex)
        return cls(target, interface, request, args, kwargs or {}, duplicates, key)

    @property
    def asynchronous(self) -> bool:
        """Whether the duplicates run as tasks in an event loop (else as threads)."""
        return self.interface == "asgi" or (self.interface == "function" and is_async(self.target))

    def describe(self) -> str:
        """How the report names the target."""
        name = getattr(self.target, "__qualname__", type(self.target).__qualname__)
        if self.request is None:
            return f"{name}()"
        return f"{self.request.method} {self.request.path} on {self.interface.upper()} app {name}"

    @contextlib.contextmanager
    def sync_duplicate(self) -> Iterator[Callable[[], str]]:
        """Yield one duplicate of a WSGI request or a sync function call."""
        if self.request is None:
            yield lambda: (self.target(*self.args, **self.kwargs), "returned")[1]  # type: ignore[operator]
            return
        import httpx  # noqa: PLC0415 - only checks of HTTP apps need httpx

        request, sent = self.request, _send_args(self.request, str(self.key))
        transport = httpx.WSGITransport(app=self.target)  # type: ignore[arg-type]
        with httpx.Client(transport=transport, base_url="http://testserver") as client:
            yield lambda: _label(client.request(request.method, request.path, **sent))  # type: ignore[arg-type]

    @contextlib.asynccontextmanager
    async def async_duplicate(self) -> AsyncIterator[Callable[[], Awaitable[str]]]:
        """Yield one duplicate of an ASGI request or an async function call."""
        if self.request is None:

            async def call() -> str:
                await self.target(*self.args, **self.kwargs)  # type: ignore[operator]
                return "returned"

            yield call
            return
        import httpx  # noqa: PLC0415 - only checks of HTTP apps need httpx

        request, sent = self.request, _send_args(self.request, str(self.key))
        transport = httpx.ASGITransport(app=self.target)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def send() -> str:
                response = await client.request(request.method, request.path, **sent)  # type: ignore[arg-type]
                return _label(response)

            yield send


def fire_threads(plan: Plan, timeout: float) -> tuple[str, ...]:
    """Run the plan's duplicates on as many threads, released together by a barrier."""
    outcomes = [NOT_FINISHED] * plan.duplicates
    barrier = threading.Barrier(plan.duplicates)
    with plan.sync_duplicate() as once:

        def run(index: int) -> None:
            try:
                barrier.wait(timeout)
                outcomes[index] = once()
            except Exception as error:  # reported as this duplicate's outcome
                outcomes[index] = _raised(error)

        threads = [
            threading.Thread(target=run, args=(i,), name=f"retrysafe-duplicate-{i}", daemon=True)
            for i in range(plan.duplicates)
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
    return tuple(outcomes)


async def fire_tasks(plan: Plan, timeout: float) -> tuple[str, ...]:
    """Run the plan's duplicates as concurrent tasks of the running event loop."""
    outcomes = [NOT_FINISHED] * plan.duplicates
    async with plan.async_duplicate() as once:

        async def run(index: int) -> None:
            try:
                outcomes[index] = await once()
            except Exception as error:  # reported as this duplicate's outcome
                outcomes[index] = _raised(error)

        with anyio.move_on_after(timeout):
            async with anyio.create_task_group() as group:
                for index in range(plan.duplicates):
                    group.start_soon(run, index)
    return tuple(outcomes)
