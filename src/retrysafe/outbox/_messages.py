"""The outbox's values, without I/O: the messages an operation adds, and their derived ids.

An operation adds messages to `tx.outbox` (or `step.outbox`); they are kept in memory until the
transaction stores its outcome, and then written, in that same transaction, to the outbox
table (`transactions/_async/outbox.py`). Each message's id is derived from the operation (its
record's identity and creation time), its phase and its index among the messages the block
added, so a retry keeping the record (atomic phases, a takeover) adds the same ids, and a consumer
(`retrysafe.consumers.idempotent_message`) applies a message that is published twice only once.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from retrysafe._errors import ConfigurationError
from retrysafe._record import Record

__all__ = [
    "MAX_TOPIC_BYTES",
    "Outbox",
    "OutboxMessage",
    "Pending",
    "decode_headers",
    "encode_headers",
    "message_id",
    "outbox_table",
]

MAX_TOPIC_BYTES: Final = 255
"""The longest topic: an AMQP routing key is a short string of at most 255 bytes."""
_NAMESPACE: Final = uuid.UUID("5d3c1f0e-6a47-4f53-9b5e-0c2a7e1b9d41")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_MAX_IDENTIFIER: Final = 63


def message_id(record: Record, index: int, phase: str = "") -> str:
    """Return the id of the `index`-th message (from 0) that `record`'s operation adds.

    A name-based UUID (version 5) of the identity's digest, the record's creation time, the
    phase (empty outside atomic phases) and the index: every retry and takeover of the
    operation derives the same ids (they keep the creation time); another key derives others,
    and so does the same key used again once its retention has ended, a new operation whose
    messages must not pass for the first one's. The client's key cannot be read back from an
    id.
    """
    parts = f"{record.identity.digest()}\x00{record.created_at!r}\x00{phase}\x00{index}"
    return str(uuid.uuid5(_NAMESPACE, parts))


def outbox_table(records_table: str) -> str:
    """Return the outbox table kept next to `records_table`.

    `retrysafe_records` has `retrysafe_outbox`; any other table `T` has `T_outbox`, shortened
    with a hash of `T` if that passes 63 characters (PostgreSQL's identifier limit).
    """
    stem = records_table.removesuffix("_records")
    name = f"{stem}_outbox"
    if len(name) > _MAX_IDENTIFIER:
        tag = hashlib.sha256(records_table.encode()).hexdigest()[:8]
        name = f"{stem[: _MAX_IDENTIFIER - len(tag) - 8]}_{tag}_outbox"
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"Invalid outbox table name {name!r}: use ASCII letters, digits and underscores, "
            "not starting with a digit."
        )
    return name


def encode_headers(headers: Mapping[str, str] | None) -> str:
    """Return `headers` as the JSON object the outbox table stores, checking their types."""
    found = dict(headers or {})
    for name, value in found.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"Message headers map str to str, not {name!r}: {value!r}.")
    return json.dumps(found, sort_keys=True, separators=(",", ":"))


def decode_headers(stored: object) -> dict[str, str]:
    """Return the headers stored as JSON text (SQLite) or as a decoded object (PostgreSQL)."""
    value = json.loads(stored) if isinstance(stored, str | bytes) else stored
    if not isinstance(value, dict):
        raise TypeError(f"Stored message headers are not a JSON object: {stored!r}.")
    return {str(name): str(item) for name, item in value.items()}


@dataclass(frozen=True, slots=True)
class Pending:
    """A message added in a block, not yet written: its id, topic, payload and headers."""

    message_id: str
    topic: str
    payload: bytes
    headers: str


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A committed message, as the relay reads it and hands it to a publisher.

    Attributes:
        id: its row's position in the outbox table (the relay publishes in this order).
        message_id: the derived id; publish it as the message id (AMQP `message_id`).
        topic: where it goes: the AMQP routing key.
        payload: the body, as added.
        headers: the headers, as added.
        created_at: when its transaction wrote it (seconds since the epoch).
    """

    id: int
    message_id: str
    topic: str
    payload: bytes
    headers: Mapping[str, str]
    created_at: float


class Outbox:
    """The messages an operation publishes once its transaction commits.

    `add` keeps a message until the transaction stores the outcome; it is then written in that
    transaction, with the business rows and the record, so it exists if and only if they
    committed. A replay, an exception or a rollback writes none of them.

    Args:
        record: the operation's record as claimed; message ids derive from it.
        phase: the atomic phase that adds the messages (empty outside atomic phases).
    """

    def __init__(self, record: Record, phase: str = "") -> None:
        self._record = record
        self._phase = phase
        self._pending: list[Pending] = []

    def add(self, topic: str, payload: bytes, *, headers: Mapping[str, str] | None = None) -> str:
        """Add a message to publish after the commit; return its derived message id.

        Args:
            topic: the AMQP routing key (1 to 255 bytes of UTF-8).
            payload: the body.
            headers: str names to str values, published as the message's headers.
        """
        if not isinstance(topic, str) or not 0 < len(topic.encode()) <= MAX_TOPIC_BYTES:
            raise ConfigurationError(f"A topic is 1 to 255 bytes of text, not {topic!r}.")
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise TypeError(f"A message payload is bytes, not {type(payload).__name__}.")
        derived = message_id(self._record, len(self._pending), self._phase)
        self._pending.append(Pending(derived, topic, bytes(payload), encode_headers(headers)))
        return derived

    @property
    def pending(self) -> tuple[Pending, ...]:
        """The messages added so far, in order."""
        return tuple(self._pending)
