"""The previous release's (0.1.0's) names of users, to find the records it stored (B39).

REMOVE in the release after the next one: a copy of 0.1.0's `principal_of`, kept so a caller
that 0.1.0 named otherwise than `retrysafe._http.scope.principal_of` does (an OpenID Connect
claims mapping by its `email`, not its `sub`; a `uuid.UUID` or a mapping whose id is 0 by no
name at all, so by its credential) finds its keys for one retention period after the upgrade
(docs/upgrading.md). A former name is looked up only where it named this caller then: never
a display name, which two users may share (the reason the current rules drop it), nor the
shared anonymous scope; a credential's scope is whoever sends that credential, as under
0.1.0. Nothing here changes what is stored: records are written under the current name only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from retrysafe._fingerprint import Revised

__all__ = ["CREDENTIAL", "revised_principal"]

CREDENTIAL: Final = ""
"""A former name that says 0.1.0 named no principal: the request's credential scoped it."""

# 0.1.0's `_PRINCIPAL_ATTRIBUTES`, most specific first; a mapping by the first truthy one.
_ATTRIBUTES: Final = ("pk", "id", "identity", "username", "email", "display_name")
_SHARED: Final = "display_name"  # a name two users may share: never looked up


def revised_principal(user: object, current: str) -> str:
    """Return `current`, the name `principal_of` gives `user`, as a `Revised` holding 0.1.0's
    name of the user where that differs: a principal's name, or `CREDENTIAL`. Unrevised where
    0.1.0 named the user alike, by a display name, or failed to name it (it stored nothing)."""
    try:
        former, attribute = _principal_010(user)
    except Exception:  # 0.1.0 raised: the request failed, and nothing was stored
        return current
    if attribute == _SHARED:
        return current
    former = CREDENTIAL if former is None else former
    return current if former == current else Revised(current, former)


def _principal_010(user: object) -> tuple[str | None, str | None]:
    """Return 0.1.0's `principal_of(user)`, and the attribute it named `user` by (None for a
    str or an int, or for no name)."""
    if user is None or getattr(user, "is_authenticated", True) is False:
        return None, None
    cls = user.__class__
    kind = f"{cls.__module__}.{cls.__qualname__}"
    if isinstance(user, str | int):
        return (f"{kind}:{user}" if user != "" else None), None
    if isinstance(user, Mapping):
        name = next((name for name in _ATTRIBUTES if user.get(name)), None)
        return (None, None) if name is None else (f"{kind}:{user[name]}", name)
    get_id = getattr(user, "get_id", None)
    if callable(get_id):
        value = get_id()
        if value not in (None, ""):
            return f"{kind}:{value}", "get_id"
    for name in _ATTRIBUTES:
        try:
            value = getattr(user, name, None)
        except NotImplementedError:  # Starlette's SimpleUser.identity
            continue
        if value not in (None, "") and not callable(value):
            return f"{kind}:{name}={value}", name
    return None, None
