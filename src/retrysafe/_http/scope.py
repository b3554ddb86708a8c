"""Who the caller is: the scope of a keyed request (B8).

The scope is the caller, not a credential. In order:

1. `scope_function(request)`, when configured: its value as it is; no value fails closed.
2. The principal the framework authenticated (ASGI `scope["user"]` when authenticated, as
   Starlette's and Litestar's auth set it; WSGI `REMOTE_USER`; what a framework integration
   names), so a token refresh keeps the scope.
3. The credential header (`scope_header`, default `Authorization`), normalised: the scheme's
   case and the white space do not matter (`Bearer x`, `bearer  x`).
4. Nothing: the request is refused (`anonymous="reject"`, the default), or shares one
   `anonymous` scope (`anonymous="shared"`, for signup or webhooks).

Principals and credentials are stored as a keyed hash (HMAC-SHA256 with a per-deployment
secret), never as themselves nor as a plain hash a leaked table could be matched against.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from typing import Final

from retrysafe._http.settings import ANONYMOUS_SCOPE, RequestView, Settings

__all__ = ["SECRET_ENV", "Scoper", "normalise_credential", "principal_of"]

SECRET_ENV: Final = "RETRYSAFE_SCOPE_SECRET"  # noqa: S105 - a variable name, not a secret
"""The environment variable that holds the scope secret when settings do not."""
# What names a user, most specific first: Django and ORMs (`pk`, `id`), Starlette
# (`identity`, `username`), Flask-Login (`get_id()`), others (`email`, `display_name`).
_KNOWN_LIMIT: Final = 4096  # scopes remembered by a `Scoper` (a dict lookup, not an HMAC)
_PRINCIPAL_ATTRIBUTES: Final = ("pk", "id", "identity", "username", "email", "display_name")


def principal_of(user: object) -> str | None:
    """Return a stable name of an authenticated `user` object, or None.

    None for no user, for an unauthenticated one (`is_authenticated` false, as Starlette's
    `UnauthenticatedUser` and Django's `AnonymousUser`), and for one with nothing that names
    it. The user's class is part of the name, so user 42 and service account 42 differ.
    """
    if user is None or getattr(user, "is_authenticated", True) is False:
        return None
    cls = user.__class__  # not type(): a proxy (Django's lazy user, LocalProxy) names its target
    kind = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(user, str | int):
        return f"{kind}:{user}" if user != "" else None
    if isinstance(user, Mapping):
        found = (user.get(name) for name in _PRINCIPAL_ATTRIBUTES)
        value = next((v for v in found if v not in (None, "") and v is not False), None)
        return None if value is None else f"{kind}:{value}"
    get_id = getattr(user, "get_id", None)
    if callable(get_id):
        value = get_id()
        if value not in (None, ""):
            return f"{kind}:{value}"
    for name in _PRINCIPAL_ATTRIBUTES:
        try:
            value = getattr(user, name, None)
        except NotImplementedError:  # Starlette's SimpleUser.identity
            continue
        if value not in (None, "") and not callable(value):
            return f"{kind}:{name}={value}"
    return None


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

    __slots__ = ("_known", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("The scope secret must have at least 16 bytes.")
        self._secret = secret
        self._known: dict[tuple[str, str | bytes], str] = {}
        """Scopes already hashed, by (header name or "", principal or credential): a replay
        would spend a quarter of its time on the HMAC. Cleared when full."""

    @staticmethod
    def configured_secret(settings: Settings) -> bytes | None:
        """Return the secret from settings or the environment, or None (kept in the store)."""
        secret = settings.scope_secret or os.environ.get(SECRET_ENV)
        if secret is None or secret == "":
            return None
        return secret.encode() if isinstance(secret, str) else secret

    def scope_of(self, settings: Settings, request: RequestView) -> str | None:
        """Return the stored scope of `request`, or None when it has none (refuse it)."""
        if settings.scope_function is not None:
            return settings.scope_function(request) or None
        principal = request.principal
        if principal:
            scope = self._known.get(("", principal))
            return scope or self._keep(("", principal), "p:", b"principal\0" + principal.encode())
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

    def _keep(self, known: tuple[str, str | bytes], prefix: str, value: bytes) -> str:
        """Hash `value` into a scope and remember it as `known`."""
        if len(self._known) >= _KNOWN_LIMIT:
            self._known.clear()
        scope = self._known[known] = prefix + hmac.digest(self._secret, value, "sha256").hex()
        return scope
