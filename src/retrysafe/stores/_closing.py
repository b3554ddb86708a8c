"""Closing a resource that was opened but could not be readied.

A store opens a connection or a subscription, then readies it (creates the schema, runs
`LISTEN`, subscribes) before it keeps or returns it; the outbox relay does the same with its
source. If readying fails, nothing holds the resource yet, so it is closed at once rather than
left open until the garbage collector finds it:

    connection = connect()
    with closed_on_error(connection):
        create_schema(connection)
    self.connection = connection
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

__all__ = ["closed_on_error"]


class _Closable(Protocol):
    def close(self) -> object: ...


@contextlib.contextmanager
def closed_on_error(resource: _Closable) -> Iterator[None]:
    """Close `resource` if the block raises (a cancellation too), then let the error through."""
    try:
        yield
    except BaseException:
        resource.close()
        raise
