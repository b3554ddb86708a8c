"""Clients that retry safely: an Idempotency-Key once per operation, reused on every retry.

    import httpx
    from retrysafe.client import IdempotentTransport

    with httpx.Client(transport=IdempotentTransport()) as client:
        response = client.post("https://api.example/payments", json={...})
        response.extensions["idempotent_replayed"]  # True if the server replayed its outcome

`IdempotentAdapter` (for requests) needs the optional `requests` package; it is imported only
when asked for, so this module works without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrysafe._extras import missing_extra

try:
    from retrysafe.client._core import (
        Handling,
        NotReplayableError,
        RetryEvent,
        RetryHook,
        RetryPolicy,
        is_replay,
    )
    from retrysafe.client._httpx import AsyncIdempotentTransport, IdempotentTransport
except ImportError as error:
    raise missing_extra("retrysafe.client", "httpx", error) from error

if TYPE_CHECKING:
    from retrysafe.client._requests import IdempotentAdapter

__all__ = [
    "AsyncIdempotentTransport",
    "Handling",
    "IdempotentAdapter",
    "IdempotentTransport",
    "NotReplayableError",
    "RetryEvent",
    "RetryHook",
    "RetryPolicy",
    "is_replay",
]


def __getattr__(name: str) -> object:
    if name == "IdempotentAdapter":
        try:
            from retrysafe.client._requests import IdempotentAdapter  # noqa: PLC0415
        except ImportError as error:
            raise missing_extra("retrysafe.client.IdempotentAdapter", "requests", error) from error
        return IdempotentAdapter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
