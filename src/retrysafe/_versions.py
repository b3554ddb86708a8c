"""The pure core of versioned consumers: what a message's (entity, version) is, and whether it is
newer than what was applied.

A versioned consumer applies a message only if its version is greater than the last version
applied for its entity; an older or equal version is skipped. The two places that keep the last
applied version (`retrysafe.transactions._async.versions`) share what is here: the rules for
entities and versions, the SQL of the versions table, and the sync twin of `AsyncHeartbeat`
that the generated code calls `Heartbeat`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Final, TypeAlias, TypeVar

from retrysafe._errors import ConfigurationError, InvalidKeyError
from retrysafe._heartbeat import THREADS, AsyncHeartbeat, ThreadJob, every
from retrysafe._keys import key_text

__all__ = [
    "DEFAULT_TABLE",
    "ENTITIES_SUFFIX",
    "LOCK_FINGERPRINT",
    "AsyncEffect",
    "AsyncHeartbeat",
    "AsyncTransactionContext",
    "Effect",
    "Heartbeat",
    "TransactionContext",
    "entity_text",
    "is_newer",
    "legacy_copy",
    "legacy_keys",
    "refused_key",
    "row_entity",
    "statements",
    "version_number",
    "version_of_point",
]

T = TypeVar("T")

ENTITIES_SUFFIX: Final = "#entities"
"""On a store, a versioned consumer keeps each entity's last applied version in a record of the
namespace `<namespace>#entities`: in flight, its version the recovery point. `keys` and the
console list them only when that namespace is asked for (they are no claims left behind)."""
DEFAULT_TABLE: Final = "retrysafe_versions"
"""The table that transactional mode keeps the last applied versions in."""

LOCK_FINGERPRINT: Final = "retrysafe.versioned-entity"
"""The fingerprint of every entity's record in a store: one per entity, whatever the message."""

SCOPE_SEPARATOR: Final = "\x1f"
"""Between a scope and an entity in the versions table: U+001F, the unit separator. Never NUL,
which PostgreSQL text cannot hold; refused in entity ids and scopes, so a key is never
ambiguous, and an unscoped entity is stored as itself, as every earlier release stored it."""
LEGACY_SCOPE_SEPARATOR: Final = "\x00"
"""What earlier releases put there: only SQLite could store it, so only SQLite has such rows."""
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
"""PostgreSQL's SQLSTATE for a key its primary key index cannot hold (2,704 bytes a row, once
compressed). SQLite has no such limit, and the versions table none of its own."""

_BIGINT: Final = 2**63  # versions are stored as SQL BIGINT: -2**63 < version < 2**63
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
# NUL (PostgreSQL text cannot hold it), the separator, and lone surrogates: what `entity_text`
# makes of bytes that are not UTF-8, which no database driver can encode.
_UNSTORABLE: Final = re.compile("[\x00\x1f\ud800-\udfff]")

Effect: TypeAlias = Callable[[], T]
"""The handler, its arguments bound: run only for a newer version."""
AsyncEffect: TypeAlias = Callable[[], Awaitable[T]]
"""The async handler, its arguments bound."""
TransactionContext: TypeAlias = AbstractContextManager[Any]
"""What a connection's `transaction()` returns: commit on exit, roll back on an exception."""
AsyncTransactionContext: TypeAlias = AbstractAsyncContextManager[Any]
"""The async form of `TransactionContext`."""


def entity_text(raw: object) -> str:
    """Return an entity id as stored: a non-empty `str`, an `int` or a `UUID` (or their bytes)."""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("utf-8", "surrogateescape")
    return key_text(raw, "A versioned message's entity")


def row_entity(scope: str, entity: str) -> str:
    """Return what the versions table keeps for an entity: the entity id itself unscoped,
    `scope` U+001F `entity` scoped.

    Raises:
        InvalidKeyError: the scope or the entity id has a character no table can hold (NUL,
            U+001F, bytes that are not UTF-8): a redelivery would fail the same way. Their
            length is the database's to refuse (`refused_key`).
    """
    for what, text in (("scope", scope), ("entity id", entity)):
        found = _UNSTORABLE.search(text)
        if found:
            raise InvalidKeyError(
                f"A versioned message's {what} {_shown(text)} has {_named(found.group())}, "
                "which the versions table cannot hold."
            )
    return f"{scope}{SCOPE_SEPARATOR}{entity}" if scope else entity


def refused_key(error: BaseException, key: str) -> InvalidKeyError | None:
    """Return the `InvalidKeyError` for a statement that failed because the database's index
    cannot hold `key` (PostgreSQL: over 2,704 bytes a row once compressed), else None."""
    if getattr(error, "sqlstate", None) != PROGRAM_LIMIT_EXCEEDED:
        return None
    return InvalidKeyError(
        f"A versioned message's scope and entity id ({len(key.encode()):,} bytes, "
        f"{_shown(key)}) are over what the versions table's index holds."
    )


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:40]!r}..."


def _named(character: str) -> str:
    if character == "\x00":
        return "a NUL"
    if character == SCOPE_SEPARATOR:
        return "a U+001F (the scope separator)"
    return "bytes that are not UTF-8"


def version_number(raw: object) -> int:
    """Return a message's version: an `int` (or its decimal text), within SQL's BIGINT."""
    if isinstance(raw, bytes | bytearray):
        raw = bytes(raw).decode("ascii", "replace")
    if isinstance(raw, str) and re.fullmatch(r"\s*[-+]?[0-9]{1,19}\s*", raw):
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and -_BIGINT < raw < _BIGINT:
        return raw
    raise InvalidKeyError(
        f"A versioned message's version must be an int between -2**63 and 2**63, not {raw!r}."
    )


def version_of_point(recovery_point: str | None) -> int | None:
    """Return the last applied version kept in an entity record's recovery point, if any."""
    return None if recovery_point is None else int(recovery_point)


def is_newer(version: int, applied: int | None) -> bool:
    """Return whether `version` is to be applied after `applied` (None: nothing applied yet)."""
    return applied is None or version > applied


def statements(table: str, mark: str) -> tuple[str, str]:
    """Return the versions table's `CREATE TABLE` and its compare-and-set, for a placeholder.

    The compare-and-set inserts the entity's version or raises it, and changes one row exactly
    when the version is newer than the stored one: its row count tells fresh from stale.
    """
    if not isinstance(table, str) or not _IDENTIFIER.fullmatch(table):
        raise ConfigurationError(
            f"The versions table must be a plain SQL identifier (letters, digits, _), "
            f"not {table!r}."
        )
    create = (
        f'CREATE TABLE IF NOT EXISTS "{table}" (namespace TEXT NOT NULL, entity TEXT NOT NULL, '
        "version BIGINT NOT NULL, PRIMARY KEY (namespace, entity))"
    )
    upsert = (
        f'INSERT INTO "{table}" (namespace, entity, version) VALUES ({mark}, {mark}, {mark}) '  # noqa: S608 - a checked identifier
        "ON CONFLICT (namespace, entity) DO UPDATE SET version = excluded.version "
        f'WHERE "{table}".version < excluded.version'
    )
    return create, upsert


def legacy_copy(table: str, mark: str) -> str:
    """Return the statement that copies a scoped entity's row of an earlier release (`scope`
    NUL `entity`, SQLite only) to its key of this one, unless that exists: bind the new key,
    the namespace and the two old keys (`legacy_keys`); of two old rows, the newer version.
    The old rows stay, unread (B39)."""
    statements(table, mark)  # checks the identifier
    return (
        f'INSERT INTO "{table}" (namespace, entity, version) '  # noqa: S608 - a checked identifier
        f"SELECT namespace, {mark}, MAX(version) "
        f'FROM "{table}" WHERE namespace = {mark} AND entity IN ({mark}, {mark}) '
        "GROUP BY namespace ON CONFLICT (namespace, entity) DO NOTHING"
    )


def legacy_keys(scope: str, former_scope: str, entity: str) -> tuple[str, str]:
    """Return the keys earlier releases gave a scoped entity: `scope` NUL `entity`, and the
    same with the scope as they wrote it (`str()` of a bytes scope: `b'acme'`)."""
    return (
        f"{scope}{LEGACY_SCOPE_SEPARATOR}{entity}",
        f"{former_scope}{LEGACY_SCOPE_SEPARATOR}{entity}",
    )


class Heartbeat:
    """The sync twin of `AsyncHeartbeat`: renew every `interval` on the shared thread."""

    __slots__ = ("_interval", "_job", "_renew")

    def __init__(self, renew: Callable[[], bool], interval: float) -> None:
        self._renew = renew
        self._interval = interval
        self._job: ThreadJob | None = None

    def start(self) -> None:
        """Start renewing: the first renewal is due `interval` from now."""
        self._job = THREADS.start(every(self._interval, self._renew), self._interval)

    def stop(self) -> None:
        """Stop renewing; once this returns, no renewal is running or will run."""
        if self._job is not None:
            THREADS.stop(self._job)
            self._job = None
