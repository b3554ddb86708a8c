"""Stored outcomes as JSON-ready data, for `keys show` (a decoded HTTP response, or raw bytes)."""

from __future__ import annotations

import base64

from retrysafe._errors import OutcomeError
from retrysafe._http import decode_outcome

__all__ = ["describe_outcome"]


def describe_outcome(outcome: bytes) -> dict[str, object]:
    """Return a stored outcome as JSON-ready data: a decoded HTTP response, or the raw bytes."""
    response = _decode_http(outcome)
    if response is not None:
        return response
    try:
        return {"kind": "raw", "text": outcome.decode("utf-8")}
    except UnicodeDecodeError:
        return {"kind": "raw", "base64": base64.b64encode(outcome).decode("ascii")}


def _decode_http(outcome: bytes) -> dict[str, object] | None:
    """Decode an outcome stored by the HTTP middleware, or None if it is not one."""
    try:
        response = decode_outcome(outcome)
    except OutcomeError:  # not an HTTP outcome (a decorator's return value, say)
        return None
    data: dict[str, object] = {
        "kind": "http",
        "status": response.status,
        "headers": [
            [name.decode("latin-1"), value.decode("latin-1")] for name, value in response.headers
        ],
    }
    if response.body_omitted:
        data["body_omitted"] = True
    try:
        data["body"] = response.body.decode("utf-8")
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(response.body).decode("ascii")
    return data
