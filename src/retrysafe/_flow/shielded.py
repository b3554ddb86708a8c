"""Store calls that run to their end whatever cancels their caller: asyncio's cancellation too.

An anyio shield (`CancelScope(shield=True)`) holds off anyio's cancellations, and all of trio's,
but not asyncio's own: `task.cancel()`, which `asyncio.wait_for`, `asyncio.timeout` and a
`TaskGroup` call, raises at the next `await` inside the shield. A completion interrupted there
leaves its outcome neither stored nor held, and the claim in flight until its lease ends, when a
retry runs the effect again; a claim interrupted there may be applied by the store while its
caller never learns its token, so it stays in flight for a lease although nothing ran. So on
asyncio such a call runs as a task of its own, which no cancellation of the caller reaches; the
caller waits for it, and is cancelled once it ends (and, for a claim, once it is undone).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

__all__ = ["outlast", "run_to_end"]

T = TypeVar("T")


async def run_to_end(work: Coroutine[Any, Any, None], keep: set[asyncio.Task[Any]]) -> None:
    """Run `work` to its end even if the caller is cancelled meanwhile, then let the caller's
    cancellation go on; `keep` references the task until it ends (asyncio holds tasks weakly).
    The work's own error comes first."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: every cancellation is a scope's, which a shield holds off
        with anyio.CancelScope(shield=True):
            await work
        return
    task = _start(work, keep, loop)
    if await _ended(task, loop) and not task.cancelled() and task.exception() is None:
        raise asyncio.CancelledError
    task.result()  # the work's own error first; CancelledError if the loop is closing


async def outlast(
    work: Coroutine[Any, Any, T],
    keep: set[asyncio.Task[Any]],
    undo: Callable[[T], Coroutine[Any, Any, None]],
) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile and return its result;
    if the caller was, `undo` that result (to its end too) and raise the cancellation instead
    (a failed work has nothing to undo). For a call whose result the caller must act on (a
    claim's token), which a cancellation must not cut off once the store has it. A caller
    whose coroutine is closed meanwhile (`GeneratorExit`) cannot wait: the result is undone
    once the work ends."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # trio: shielded, then the cancellation pending is delivered
        return await _outlast_trio(work, keep, undo)
    task = _start(work, keep, loop)
    try:
        cancelled = await _ended(task, loop)
    except GeneratorExit:
        task.add_done_callback(partial(_undo_when_done, undo, keep))
        raise
    if not cancelled:
        return task.result()
    if not task.cancelled() and task.exception() is None:
        await run_to_end(undo(task.result()), keep)
    raise asyncio.CancelledError


async def _outlast_trio(
    work: Coroutine[Any, Any, T],
    keep: set[asyncio.Task[Any]],
    undo: Callable[[T], Coroutine[Any, Any, None]],
) -> T:
    failed: Exception | None = None
    with anyio.CancelScope(shield=True):
        try:
            result = await work
        except Exception as error:
            failed = error
    if anyio.current_effective_deadline() != -math.inf:  # not cancelled
        if failed is not None:
            raise failed
        return result
    if failed is None:
        await run_to_end(undo(result), keep)
    await anyio.lowlevel.checkpoint()  # raises trio's cancellation
    raise AssertionError("unreachable: the caller was cancelled")


def _start(
    work: Coroutine[Any, Any, T], keep: set[asyncio.Task[Any]], loop: asyncio.AbstractEventLoop
) -> asyncio.Task[T]:
    task = loop.create_task(work)
    keep.add(task)
    task.add_done_callback(keep.discard)
    return task


async def _ended(task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop) -> bool:
    """Wait until `task` ends; return whether the caller was cancelled meanwhile.

    The caller waits on a future of its own that the task's end resolves (what `asyncio.shield`
    does, without its generality: a third less time a call), so cancelling the caller cancels
    only that future; the task runs on (anyio cancels at every turn)."""
    cancelled = False
    while not task.done():
        ended = loop.create_future()
        task.add_done_callback(partial(_resolve, ended))
        try:
            await ended
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _undo_when_done(
    undo: Callable[[T], Coroutine[Any, Any, None]],
    keep: set[asyncio.Task[Any]],
    task: asyncio.Task[T],
) -> None:
    if not task.cancelled() and task.exception() is None:
        _start(undo(task.result()), keep, task.get_loop())


def _resolve(ended: asyncio.Future[None], task: asyncio.Task[Any]) -> None:
    if not ended.done():  # cancelled with its caller
        ended.set_result(None)
