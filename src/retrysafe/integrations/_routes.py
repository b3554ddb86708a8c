"""What every framework integration shares: route marks, path-pattern fallback, a small cache.

A mark is an attribute on the endpoint (or dependency) holding its `RouteSettings`, or None for
"not covered" (`exempt=True`). The hook of each integration finds the endpoint the framework
will route a request to, then combines, closest to the code last:

    defaults (the middleware's settings) <- path patterns (`routes=`) <- the route's mark

An unmarked route, or a request that matches no route, gets what the path patterns say.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Mapping
from typing import Final, Literal, TypedDict, TypeVar

from retrysafe._http import OutcomePolicy, RouteSettings, compile_pattern
from retrysafe._keys import KeyPolicy

__all__ = [
    "DEFAULT_ROUTE",
    "MARK_ATTRIBUTE",
    "UNMARKED",
    "PathPatterns",
    "RouteOptions",
    "Unmarked",
    "mark",
    "marked_route",
    "merge",
    "read_mark",
    "route_from_options",
]

MARK_ATTRIBUTE: Final = "__retrysafe_route__"
DEFAULT_ROUTE: Final = RouteSettings()
"""Covered with the middleware's own settings."""

_T = TypeVar("_T")


class Unmarked:
    """The type of `UNMARKED`: a route that says nothing about idempotency."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNMARKED"


UNMARKED: Final = Unmarked()


class RouteOptions(TypedDict, total=False):
    """The per-route options of `idempotency(...)`: the fields of `RouteSettings`."""

    required: bool
    methods: Collection[str]
    retention: float
    lease: float
    wait: float
    namespace: str
    key_policy: KeyPolicy
    fingerprint: Literal["raw", "json"]
    outcomes: OutcomePolicy
    mismatch_status: int
    max_body_size: int
    max_response_size: int


def route_from_options(*, exempt: bool, options: RouteOptions) -> RouteSettings | None:
    """Return the route settings a mark holds: None when `exempt`, else `options`."""
    if exempt:
        if options:
            raise TypeError("An exempt route takes no other idempotency options.")
        return None
    return RouteSettings(**options)


def mark(target: _T, route: RouteSettings | None) -> _T:
    """Attach `route` to `target` (a function or class) and return `target` itself, unwrapped.

    Never wrapping means the mark works above or below the framework's route decorator.
    """
    setattr(target, MARK_ATTRIBUTE, route)
    return target


def read_mark(target: object) -> RouteSettings | Unmarked | None:
    """Return the mark on `target`, or `UNMARKED`."""
    value = getattr(target, MARK_ATTRIBUTE, UNMARKED)
    if value is None or isinstance(value, RouteSettings | Unmarked):
        return value
    return UNMARKED


def marked_route(*, exempt: bool, options: RouteOptions) -> Callable[[_T], _T]:
    """Return a decorator that marks its function or class with these options."""
    route = route_from_options(exempt=exempt, options=options)

    def decorate(target: _T) -> _T:
        return mark(target, route)

    return decorate


def merge(
    base: RouteSettings | None, mark_: RouteSettings | Unmarked | None
) -> RouteSettings | None:
    """Return `base` (from path patterns) with a route's mark applied over it."""
    if isinstance(mark_, Unmarked):
        return base
    if mark_ is None or base is None or base == DEFAULT_ROUTE:
        return mark_
    changes = {
        f.name: getattr(mark_, f.name)
        for f in dataclasses.fields(mark_)
        if getattr(mark_, f.name) is not None
    }
    return dataclasses.replace(base, **changes)


class PathPatterns:
    """Path patterns to route settings, as the middleware's `routes=` takes them.

    `*` matches within one path segment, `**` anything; the first match wins; a path no
    pattern matches is covered with the middleware's settings.

    Args:
        routes: pattern to `RouteSettings`, or None for "not covered".
    """

    def __init__(self, routes: Mapping[str, RouteSettings | None] | None = None) -> None:
        self._targets = list((routes or {}).values())
        alternatives = [
            f"(?P<r{index}>{compile_pattern(pattern)})"
            for index, pattern in enumerate(routes or {})
        ]
        self._regex = re.compile("|".join(alternatives)) if alternatives else None

    def for_path(self, path: str) -> RouteSettings | None:
        """Return the settings the patterns give `path`."""
        if self._regex is None:
            return DEFAULT_ROUTE
        match = self._regex.fullmatch(path)
        if match is None or match.lastgroup is None:
            return DEFAULT_ROUTE
        return self._targets[int(match.lastgroup[1:])]
