"""Who the caller is: the scope of a keyed request (B8).

The scope is the caller, not a credential. In order:

1. `scope_function(request)`, when configured: its value, a str, as it is; no value fails
   closed, and a value of another type is a `ScopeError` (a configuration error).
2. The principal the framework authenticated (ASGI `scope["user"]` when authenticated, as
   Starlette's and Litestar's auth set it; WSGI `REMOTE_USER`; what a framework integration
   names), so a token refresh keeps the scope. A user is named by a stable identifier only
   (`principal_of`); one with none is a `ScopeError`.
3. The credential header (`scope_header`, default `Authorization`), normalised: the scheme's
   case and the white space do not matter (`Bearer x`, `bearer  x`). It is taken whole and
   never checked, so a credential the client computes anew for every send (HTTP Digest, AWS
   Signature Version 4) makes every send a new caller: none of its parts (a Digest user name
   or nonce) is a secret, and none names a caller before the app has verified it.
4. Nothing: the request is refused (`anonymous="reject"`, the default), or shares one
   `anonymous` scope (`anonymous="shared"`, for signup or webhooks).

A caller the previous release (0.1.0) scoped otherwise gets a `Revised` scope holding that one
too (`retrysafe._http.former`): the flow admits the request on it where a record is there (B39).

Principals and credentials are stored as a keyed hash (HMAC-SHA256 with a per-deployment
secret), never as themselves nor as a plain hash a leaked table could be matched against.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import uuid
from collections.abc import Mapping
from typing import Final

from retrysafe._errors import ConfigurationError
from retrysafe._fingerprint import Revised
from retrysafe._http.former import revised_principal
from retrysafe._http.settings import ANONYMOUS_SCOPE, RequestView, Settings

__all__ = [
    "SECRET_ENV",
    "NoCaller",
    "ScopeError",
    "Scoper",
    "normalise_credential",
    "principal_of",
]

SECRET_ENV: Final = "RETRYSAFE_SCOPE_SECRET"  # noqa: S105 - a variable name, not a secret
"""The environment variable that holds the scope secret when settings do not."""
_KNOWN_LIMIT: Final = 4096  # scopes remembered by a `Scoper` (a dict lookup, not an HMAC)
_KNOWN_LONGEST: Final = 4096  # characters of a principal or credential worth remembering
_KNOWN_BYTES: Final = 4 << 20  # characters of the principals and credentials remembered in all
# What names a user: stable, unique identifiers only, most specific first: Flask-Login
# (`get_id()`), Django and ORMs (`pk`, `id`), Starlette (`identity`, `username`), OpenID
# Connect claims (`sub`). Never a display name or an e-mail address: neither unique nor stable.
_IDENTIFIERS: Final = ("get_id", "pk", "id", "identity", "username", "sub")
_ABSENT: Final = object()
_STARLETTE_USER: Final = "starlette.authentication.SimpleUser"


class ScopeError(ConfigurationError):
    """A keyed request's caller cannot be named, by a fault of the server's configuration: a
    user object with no stable identifier, a scope function's value that is not a str, a
    principal dependency that cannot be resolved. The request is refused (nothing runs)."""


class NoCaller(Exception):  # noqa: N818 - a refusal, as `scope-missing` is, not a fault
    """A keyed request names no caller by its own fault: what names its user is missing or
    malformed in what the client sent (a header a principal dependency reads). The request is
    refused as one with no caller is (`scope-missing`); nothing runs. The message says why."""


def principal_of(user: object) -> str | None:
    """Return a stable name of an authenticated `user`, or None if it is no one.

    A str, an int or a UUID is its own name. A user object (or mapping) is named by the first
    of `_IDENTIFIERS` it has a value for. None for no user, for an unauthenticated one
    (`is_authenticated` false, as Starlette's `UnauthenticatedUser`, Django's `AnonymousUser`
    and Flask-Login's anonymous user say), and for an object whose identifiers are all empty
    and that does not say it is authenticated (a guest object an app sets for visitors). The
    user's class is part of the name, so user 42 and service account 42 differ. Where the
    previous release named the user otherwise, the name is `Revised` with that one (B39,
    `retrysafe._http.former`), which `Scoper` looks up for the caller's older records.

    Raises:
        ScopeError: `user` has no stable identifier (or says it is authenticated with an
            empty one), or is a bool: naming it by anything else could make two users one. Or
            reading it failed (a lazy attribute whose database session is gone): its caller is
            unknown, never taken for no one.
    """
    if user is None:
        return None
    try:
        return _early_starlette_user(user) or _named(user)
    except ScopeError:
        raise
    except Exception as error:
        kind = f"{type(user).__module__}.{type(user).__qualname__}"
        raise ScopeError(
            f"Reading the user {kind} failed ({type(error).__name__}), so the caller of this "
            "request is unknown."
        ) from error


def _early_starlette_user(user: object) -> str | None:
    """Return the name of Starlette's `SimpleUser` as Starlette before 0.41 defines it (no
    `identity`, which later ones return as its `username`): the same name either way, so an
    upgrade of Starlette keeps every caller's records; 0.1.0's by `username` is the former
    (B39). None for any other user, named by `_named`."""
    cls = user.__class__
    if cls.__qualname__ != "SimpleUser" or cls.__module__ != "starlette.authentication":
        return None  # the common case: two comparisons
    if "identity" in vars(cls):
        return None
    username = _read(user, "username")
    if not isinstance(username, str) or not username:
        return None
    return revised_principal(user, f"{_STARLETTE_USER}:identity={username}")


def _named(user: object) -> str | None:
    """Return `principal_of(user)`, for a user that is not None.

    Where the previous release may have named the user otherwise (a UUID, a mapping, an object
    named by `sub` or after skipping a bool or a method), its name is `revised_principal`'s
    (B39): an object named by `pk`, `id`... as 0.1.0 named it costs nothing more.
    """
    cls = user.__class__  # not type(): a proxy (Django's lazy user, LocalProxy) names its target
    kind = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(user, str | int | uuid.UUID) and not isinstance(user, bool):
        if user == "":
            return None
        name = f"{kind}:{user}"
        return revised_principal(user, name) if isinstance(user, uuid.UUID) else name
    authenticated = _read(user, "is_authenticated")
    if callable(authenticated):  # a method in Django < 1.10 and Flask-Login < 0.3
        authenticated = authenticated()
    if authenticated is not _ABSENT and not authenticated:
        return None
    mapping, empty, unusual = isinstance(user, Mapping), False, False
    for name in _IDENTIFIERS:
        value = _read(user, name)
        if name == "get_id" and callable(value):
            value = _call(value)
        if value is None or value == "":
            empty = True
        elif value is not _ABSENT and not callable(value) and not isinstance(value, bool):
            named = f"{kind}:{value}" if mapping or name == "get_id" else f"{kind}:{name}={value}"
            if mapping or unusual or name == "sub":
                return revised_principal(user, named)  # B39: 0.1.0 may have named it otherwise
            return named
        elif value is not _ABSENT:
            unusual = True  # a bool or a method skipped, which 0.1.0 may have named it by
    if empty and authenticated is _ABSENT:
        return None
    if empty:
        raise ScopeError(
            f"The user {kind} says it is authenticated but its identifier is empty, so "
            "Idempotency-Keys cannot be scoped to it. Name each user, or set is_authenticated "
            "false for visitors who are not logged in."
        )
    raise ScopeError(
        f"The user {kind} has no stable identifier to scope Idempotency-Keys by: give it a "
        "pk, id, identity, username or sub attribute (or Flask-Login's get_id()), set "
        "is_authenticated false for visitors who are not logged in, or configure a "
        "scope_function. Display names and e-mail addresses are never used: they are neither "
        "unique nor stable."
    )


def _read(user: object, name: str) -> object:
    """Return `user`'s attribute (or a mapping's item) `name`, or `_ABSENT`."""
    if isinstance(user, Mapping):
        return _ABSENT if name == "get_id" else user.get(name, _ABSENT)
    try:
        return getattr(user, name, _ABSENT)
    except NotImplementedError:  # Starlette's `BaseUser` leaves its properties abstract
        return _ABSENT


def _call(get_id: object) -> object:
    """Return what Flask-Login's `get_id()` returns, or `_ABSENT` if it is not implemented."""
    try:
        return get_id()  # type: ignore[operator]
    except NotImplementedError:  # `UserMixin.get_id` without an `id` attribute
        return _ABSENT


def normalise_credential(value: bytes) -> bytes:
    """Return a credential header's value with the scheme in lower case and the white space
    folded: `Bearer  x` and `bearer x` are one credential (RFC 9110 section 11.1)."""
    parts = value.split()
    if len(parts) == 2:
        return parts[0].lower() + b" " + parts[1]
    return b" ".join(parts)


class Scoper:
    """Computes scopes with one deployment's secret.

    Args:
        secret: the HMAC key; `Scoper.from_settings` finds it in settings or the environment.
    """

    __slots__ = ("_held", "_known", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("The scope secret must have at least 16 bytes.")
        self._secret = secret
        self._known: dict[tuple[str, str | bytes], str] = {}
        """Scopes already hashed, by (header name or "", principal or credential): a replay
        would spend a quarter of its time on the HMAC. Cleared when full: `_KNOWN_LIMIT`
        scopes, or `_KNOWN_BYTES` of principals and credentials (`_held`). One longer than
        `_KNOWN_LONGEST` (a client's, valid or not) is hashed each time, never kept."""
        self._held = 0

    @staticmethod
    def configured_secret(settings: Settings) -> bytes | None:
        """Return the secret from settings or the environment, or None (kept in the store)."""
        secret = settings.scope_secret or os.environ.get(SECRET_ENV)
        if secret is None or secret == "":
            return None
        return secret.encode() if isinstance(secret, str) else secret

    def scope_of(self, settings: Settings, request: RequestView) -> str | None:
        """Return the stored scope of `request`, or None when it has none (refuse it).

        Raises:
            ScopeError: the scope function returned neither a str nor None.
        """
        if settings.scope_function is not None:
            scope = settings.scope_function(request)
            if scope is None or scope == "":
                return None
            if not isinstance(scope, str):
                function = settings.scope_function
                name = getattr(function, "__qualname__", repr(function))
                raise ScopeError(
                    f"The scope function {name} returned a value of type "
                    f"{type(scope).__name__}, not a str: return the scope as a str "
                    "(str(tenant_id)), or None to refuse the request."
                )
            return scope
        principal = request.principal
        if principal:
            scope = self._known.get(("", principal)) or self._keep(
                ("", principal), "p:", b"principal\0" + principal.encode()
            )
            if type(principal) is Revised:  # B39: the previous release named it otherwise
                scope = self._revised(settings, request, scope, principal.former)
            return scope
        header = settings.scope_header
        credential = request.header(header)
        if credential is not None and credential.strip():
            scope = self._known.get((header, credential))
            if scope is not None:
                return scope
            name = header.lower().encode()
            value = b"credential\0" + name + b"\0" + normalise_credential(credential)
            return self._keep((header, credential), "c:", value)
        return ANONYMOUS_SCOPE if settings.anonymous == "shared" else None

    def _revised(self, settings: Settings, request: RequestView, scope: str, former: str) -> str:
        """Return `scope` revised with the scope the previous release gave the caller it named
        `former` (`retrysafe._http.former`): that name's, or (`CREDENTIAL`) its own
        credential's; never the shared anonymous scope, which other callers' records share
        (B39)."""
        named = dataclasses.replace(request, principal=former or None)  # a plain str, or None
        previous = self.scope_of(settings, named)
        if previous is None or previous in (ANONYMOUS_SCOPE, scope):
            return scope
        return Revised(scope, previous)

    def _keep(self, known: tuple[str, str | bytes], prefix: str, value: bytes) -> str:
        """Hash `value` into a scope and remember it as `known`, unless it is too long."""
        scope = prefix + hmac.digest(self._secret, value, "sha256").hex()
        size = len(known[1])
        if size <= _KNOWN_LONGEST:
            if len(self._known) >= _KNOWN_LIMIT or self._held + size > _KNOWN_BYTES:
                self._known.clear()
                self._held = 0
            self._known[known] = scope
            self._held += size
        return scope
