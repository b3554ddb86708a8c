"""Stored outcomes: the response capture, the outcome policy, the stored form, the replay."""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from retrysafe._errors import OutcomeError
from retrysafe._http.problems import Response, problem
from retrysafe._http.settings import STATUS_HEADERS, Header, Settings, logger
from retrysafe._record import Record

__all__ = [
    "ResponseCapture",
    "StoredResponse",
    "decode_outcome",
    "encode_omitted",
    "encode_outcome",
    "outcome_to_store",
    "replay_response",
    "transient_conflict",
]

# The outcome codec: a small binary frame, fast to decode on the replay path.
#   magic "RSH1" | status u16 | flags u8 | header count u16 | (name len u16, value len u32,
#   name, value)* | body
_MAGIC: Final = b"RSH1"
_HEAD: Final = struct.Struct(">4sHBH")
_LINE: Final = struct.Struct(">HI")
_BODY_OMITTED: Final = 1


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A decoded stored outcome.

    Attributes:
        status: the original status.
        headers: the allow-listed original headers.
        body: the original body (empty if omitted).
        body_omitted: the body was above the storable limit and was not stored (B22).
    """

    status: int
    headers: tuple[Header, ...]
    body: bytes
    body_omitted: bool = False


def encode_outcome(
    status: int, headers: Collection[Header], body: bytes, settings: Settings
) -> bytes:
    """Return the stored form of a response, keeping only allow-listed headers (B11)."""
    return _encode(status, _kept(status, headers, settings), body, 0)


def encode_omitted(status: int, headers: Collection[Header], settings: Settings) -> bytes:
    """Return the stored form of a response whose body was too large to store (B22)."""
    return _encode(status, _kept(status, headers, settings), b"", _BODY_OMITTED)


def _kept(status: int, headers: Collection[Header], settings: Settings) -> list[Header]:
    """Return the headers of a response that are stored: allow-listed, or required by its
    status (`STATUS_HEADERS`), lower-cased."""
    allowed, required = settings.stored_header_names, STATUS_HEADERS.get(status)
    return [
        (name, value)
        for name, value in ((name.lower(), value) for name, value in headers)
        if name in allowed or name == required
    ]


def _encode(status: int, headers: Sequence[Header], body: bytes, flags: int) -> bytes:
    parts = [_HEAD.pack(_MAGIC, status, flags, len(headers))]
    for name, value in headers:
        parts += (_LINE.pack(len(name), len(value)), name, value)
    parts.append(body)
    return b"".join(parts)


def decode_outcome(data: bytes) -> StoredResponse:
    """Return the response stored as `data`.

    Raises:
        OutcomeError: `data` is not an outcome written by `encode_outcome`.
    """
    try:
        magic, status, flags, count = _HEAD.unpack_from(data)
        if magic != _MAGIC:
            raise OutcomeError("The stored outcome is not an HTTP response.")
        offset = _HEAD.size
        headers = []
        for _ in range(count):
            name_length, value_length = _LINE.unpack_from(data, offset)
            offset += _LINE.size
            name = data[offset : offset + name_length]
            offset += name_length
            value = data[offset : offset + value_length]
            offset += value_length
            headers.append((name, value))
    except struct.error:
        raise OutcomeError("The stored outcome is truncated.") from None
    if offset > len(data):
        raise OutcomeError("The stored outcome is truncated.")
    return StoredResponse(status, tuple(headers), data[offset:], bool(flags & _BODY_OMITTED))


def replay_response(record: Record, settings: Settings) -> Response:
    """Return the response replayed for a completed `record` (B10), or a problem.

    The stored status, headers and body byte for byte, plus the replay header. A response that
    was too large to store is answered with the 410 response-not-stored problem (B22).
    """
    if record.outcome is None:
        return problem("outcome-unreadable", settings, "The stored outcome is missing.")
    try:
        stored = decode_outcome(record.outcome)
    except OutcomeError:
        logger.exception("Cannot decode the stored outcome of %s", record.identity)
        return problem("outcome-unreadable", settings, "The stored outcome cannot be read.")
    if stored.body_omitted:
        return problem(
            "response-not-stored",
            settings,
            f"The request with this Idempotency-Key was processed (status {stored.status}), "
            "but its response was too large to store for replay. It will not run again.",
            replayed=True,
        )
    # RFC 9110 8.6: no Content-Length on a 204 (or a 304).
    length = () if stored.status in _BODILESS else ((b"content-length", b"%d" % len(stored.body)),)
    headers = (*stored.headers, *length, (settings.replay_header_name, b"true"))
    return Response(stored.status, headers, stored.body)


_BODILESS: Final = frozenset({204, 304})


def outcome_to_store(capture: ResponseCapture, settings: Settings) -> bytes | None:
    """Return the outcome to `complete` for a captured response, or None to `release` (B18).

    A response above the storable limit that the policy would store becomes an "omitted body"
    outcome: the effect happened, so a retry must not run it again (B22, B23).
    """
    if capture.status is None or not capture.complete:
        return None
    if not settings.stores_status(capture.status):
        return None
    if (
        capture.status == 409
        and settings.outcomes == "definitive"
        and transient_conflict(capture.headers, capture.body())
    ):
        return None
    if capture.overflowed:
        return encode_omitted(capture.status, capture.headers, settings)
    return encode_outcome(capture.status, capture.headers, capture.body(), settings)


def transient_conflict(headers: Iterable[Header], body: bytes) -> bool:
    """Return whether a 409 is another retrysafe layer's, not the key's outcome (B18): an RFC
    9457 problem whose type is `request-in-flight` under any base URL (a layer behind this one,
    answering for a request still running there: nothing ran for this one). An app's own 409
    is its outcome, `Retry-After` or not: released, transactional mode would roll its writes
    back while the client is told of them."""
    problem = False
    for raw, value in headers:
        if raw.lower() == b"content-type":
            problem = value.partition(b";")[0].strip().lower() == b"application/problem+json"
    if not problem:
        return False
    try:
        kind = json.loads(body).get("type")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return False
    return isinstance(kind, str) and kind.endswith(_IN_FLIGHT_TYPES)


_IN_FLIGHT_TYPES: Final = ("#request-in-flight", "/request-in-flight")


class ResponseCapture:
    """The response of one execution, buffered up to the storable limit.

    Per request; the faces feed it the app's status, headers and body chunks. Once the body
    passes `limit` it is `overflowed`: the face streams the rest to the client instead of
    buffering it.

    Args:
        limit: the largest body buffered (`max_response_size`).
    """

    __slots__ = ("_chunks", "complete", "headers", "limit", "overflowed", "size", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: int | None = None
        self.headers: Sequence[Header] = ()
        self._chunks: list[bytes] = []
        self.size = 0
        self.complete = False
        self.overflowed = False

    def start(self, status: int, headers: Sequence[Header]) -> None:
        """Record the status and headers (again, if the app restarts an error response)."""
        self.status = status
        self.headers = headers

    def add(self, chunk: bytes) -> bool:
        """Buffer `chunk`; return whether the body just passed the limit (time to stream)."""
        self.size += len(chunk)
        if self.overflowed:
            return False
        if chunk:
            self._chunks.append(chunk)
        if self.size > self.limit:
            self.overflowed = True
            return True
        return False

    def body(self) -> bytes:
        """Return the buffered body."""
        return b"".join(self._chunks)

    def take(self) -> bytes:
        """Return the buffered body and forget it (it is being streamed out)."""
        body = self.body()
        self._chunks = []
        return body
