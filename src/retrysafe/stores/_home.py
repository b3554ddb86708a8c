"""Where a store's async connections live: one event loop, in one process.

An async driver's connection belongs to the event loop that opened it (its streams and futures
are that loop's), and its socket to the process that opened it; redis-py's and aiomysql's
connections track neither. Yet a store is often met elsewhere than where it was first used:
`asyncio.run` at start-up and then the server's loop, a test helper that runs each check on a
loop of its own, gunicorn `--preload` forking workers from a master that used it. So an async
store notes where its connections were last used (`AsyncHome`); met on another loop, or in a
forked child, it moves: it lets go of those connections and opens new ones here, as needed.

- In a forked child, the parent's connections are kept referenced, unused and unclosed, for the
  child's lifetime (`INHERITED`): closing one could write on the parent's socket (a TLS
  close_notify, a driver's goodbye) or take it out of the parent's poller, and the garbage
  collector would close it if nothing kept it.
- In the same process, the old loop's connections are closed as far as that loop allows; once
  it is closed, the garbage collector closes their sockets (with a `ResourceWarning`, as the
  drivers do for connections whose loop is gone).

A store serves one event loop at a time, in turn; not two running at once (a loop per thread),
which the drivers do not support either. A call on a second loop while the loop the store was
last used on still runs (in another thread) fails closed before it touches a connection
(`StoreUnavailableError`); the store moves only once that loop has stopped. Should a connection
of another loop reach a call anyway, asyncio's complaint about it (`loop_mismatch`) is the
store's unavailability too, never a raw `RuntimeError`. Off asyncio (trio) there is no event
loop to move to: a call raises `ConfigurationError` (these stores need asyncio).

The sync face (`Home`) only follows forks: it has no event loop, but threads, so the first
thread of a child to use a store moves it while the others wait (`moved`, then `settled`).
"""

from __future__ import annotations

import asyncio
import os
import threading
from types import TracebackType
from typing import Final

from retrysafe._errors import ConfigurationError, StoreUnavailableError
from retrysafe.stores._deletes import FORKS

__all__ = [
    "INHERITED",
    "AsyncHome",
    "AsyncOneLoop",
    "ErrorsAs",
    "Home",
    "OneLoop",
    "loop_mismatch",
    "raise_unusable",
    "unusable_here",
]


class _Inherited:
    """What a forked child's stores inherited from its parent: kept, never used nor closed."""

    __slots__ = ("kept",)

    def __init__(self) -> None:
        self.kept: list[object] = []

    def keep(self, *inherited: object) -> None:
        """Keep `inherited` referenced, unused and open, for as long as this process lives."""
        self.kept.extend(inherited)


INHERITED: Final = _Inherited()


class _Moving:
    """The lock under which one thread of a forked child moves a sync store; each child gets a
    new one, since a thread of the parent may have held it."""

    __slots__ = ("lock",)

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def forked(self) -> None:
        self.lock = threading.Lock()


_MOVING: Final = _Moving()
os.register_at_fork(after_in_child=_MOVING.forked)
_TAKING: Final = _Moving()  # under which an async store is taken from one loop to another
os.register_at_fork(after_in_child=_TAKING.forked)


class AsyncHome:
    """The event loop and process where a store's connections were last used (async face).

    Args:
        server: what the store's errors call the server ("Redis", "PostgreSQL").
    """

    __slots__ = ("_forks", "_loop", "_server")

    def __init__(self, server: str = "The store") -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._forks = FORKS.count
        self._server = server

    def moved(self) -> bool | None:
        """Note that the store is used here (the running loop, this process).

        Returns None when its connections are already this loop's and this process's (or it
        has none yet), else whether it moved out of a parent process (True) or only to another
        event loop (False): the caller then lets go of its connections. Raises
        `StoreUnavailableError` if the loop it was last used on still runs (two at once), and
        `ConfigurationError` off asyncio (trio): see the module.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a coroutine run by trio (or another library): no asyncio loop
            raise ConfigurationError(
                "The Redis, PostgreSQL and MySQL async stores need asyncio, and no asyncio"
                " event loop is running (trio?): use the sync store in a worker thread, or the"
                " SQLite or memory async store."
            ) from None
        forks = FORKS.count
        if loop is self._loop and forks == self._forks:
            return None
        with _TAKING.lock:  # one thread at a time decides who has the store
            last = self._loop
            if forks == self._forks and last is not None and last.is_running():
                raise StoreUnavailableError(
                    f"{self._server} is unavailable on this event loop: the store is in use on"
                    " another one, running at once in another thread (a store serves one event"
                    " loop at a time; use one store per loop)."
                )
            first, forked = last is None, forks != self._forks
            self._loop, self._forks = loop, forks
        return None if first and not forked else forked

    def settled(self) -> None:
        """The move `moved` asked for is over (one event loop: nobody waited for it)."""

    def here(self) -> bool:
        """Return whether the connections were last used here (changes nothing)."""
        return self._forks == FORKS.count and self._loop is asyncio.get_running_loop()


class Home:
    """The process where a store's connections were last used (sync face: no event loop)."""

    __slots__ = ("_forks",)

    def __init__(self, server: str = "The store") -> None:  # named as `AsyncHome` is
        self._forks = FORKS.count

    def moved(self) -> bool | None:
        """Return True if the store moved out of a parent process since it was last used, else
        None. On True the caller leaves its connections, then calls `settled`; meanwhile the
        other threads of this process wait here, and then find it moved."""
        if self._forks == FORKS.count:
            return None
        _MOVING.lock.acquire()
        if self._forks == FORKS.count:  # another thread of this child moved it meanwhile
            _MOVING.lock.release()
            return None
        return True

    def settled(self) -> None:
        """The move `moved` asked for is over (done or failed): let the other threads go on."""
        self._forks = FORKS.count  # before the release: a thread let in finds it moved
        _MOVING.lock.release()

    def here(self) -> bool:
        """Return whether the connections were last used in this process."""
        return self._forks == FORKS.count


# What asyncio says of a connection used on a loop it does not belong to: its loop is closed,
# a future of another loop was awaited, a lock bound to another loop was waited on, or (debug
# mode) a call came from another loop's thread.
_MISMATCHES = (
    "Event loop is closed",
    "attached to a different loop",
    "bound to a different event loop",
    "event loop other than the current one",
)


def loop_mismatch(error: BaseException) -> bool:
    """Return whether `error` is asyncio's complaint about a connection of another event loop:
    that connection is unusable here (the store is unavailable), not the program wrong."""
    return type(error) is RuntimeError and any(part in str(error) for part in _MISMATCHES)


def raise_unusable(error: BaseException, name: str) -> None:
    """Raise `StoreUnavailableError` from `error` if it is asyncio's complaint about a
    connection of another event loop (`loop_mismatch`); `name` names the server."""
    if loop_mismatch(error):
        raise StoreUnavailableError(
            f"{name} is unavailable: a connection of another event loop ({error})."
        ) from error


class ErrorsAs:
    """A context manager that raises retrysafe's error for the errors `translate` knows, and
    lets the rest through (a class: cheaper than a generator)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is not None:
            self.translate(error)

    def translate(self, error: BaseException) -> None:
        """Raise retrysafe's error for `error`, or return to let it through."""


class _UnusableHere(ErrorsAs):
    """The context manager behind `unusable_here`."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def translate(self, error: BaseException) -> None:
        raise_unusable(error, self._name)


def unusable_here(name: str) -> _UnusableHere:
    """Raise asyncio's complaint about a connection of another event loop (`loop_mismatch`)
    as `StoreUnavailableError` (`name` names the server); let anything else through."""
    return _UnusableHere(name)


class AsyncOneLoop(AsyncHome):
    """The event loop a store serves whose connections need no move between loops used in turn
    (PostgreSQL: psycopg waits on the running loop, and the batcher starts afresh on another):
    `enter` only refuses a second loop running at once, and trio (`AsyncHome.moved`)."""

    __slots__ = ()

    def enter(self) -> None:
        """Note that the store is used on the running loop; raise if it may not be."""
        self.moved()


class OneLoop:
    """The sync twin of `AsyncOneLoop`: no event loop, nothing to refuse."""

    __slots__ = ()

    def __init__(self, server: str) -> None:
        del server

    def enter(self) -> None:
        """Do nothing: the sync store is not used on an event loop."""
