"""What every framework integration shares: route marks, path-pattern fallback, a small cache.

A mark is an attribute on the endpoint (or dependency) holding its `RouteSettings`, or None for
"not covered" (`exempt=True`). The hook of each integration finds the endpoint the framework
will route a request to, then combines, closest to the code last:

    defaults (the middleware's settings) <- path patterns (`routes=`) <- the route's mark

An unmarked route, or a request that matches no route, gets what the path patterns say; a
request the router only redirects to its slashed or unslashed path is not covered.
`RouteCache` does that combining and remembers it per routed request (in a `BoundedCache`);
each hook only says how a request is keyed and how its mark is found.

What a covered route adds to its API description is in `_openapi.py`. Each integration
imports its framework inside `framework_imports`, so a missing one is a one-line error that
says what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from typing import Final, Literal, TypeAlias, TypedDict, TypeVar, Unpack

from retrysafe._http import OutcomePolicy, RouteSettings
from retrysafe._http.asgi_io import Receive, Scope, Send
from retrysafe._http.routing import PathMatcher
from retrysafe._http.settings import Anonymous
from retrysafe._keys import KeyPolicy

__all__ = [
    "DEFAULT_ROUTE",
    "MARK_ATTRIBUTE",
    "UNMARKED",
    "BoundedCache",
    "PathPatterns",
    "Patterns",
    "RouteCache",
    "RouteOptions",
    "Unmarked",
    "framework_imports",
    "idempotency",
    "mark",
    "merge",
    "missing_framework",
    "read_mark",
    "route_from_options",
    "unbound",
    "view_mark",
]

MARK_ATTRIBUTE: Final = "__retrysafe_route__"
DEFAULT_ROUTE: Final = RouteSettings()
"""Covered with the middleware's own settings."""

Patterns: TypeAlias = Mapping[str, RouteSettings | None] | None
"""Path patterns to the settings of the routes they match (None: not covered), or none."""

_KEY_LONGEST: Final = 4096
"""The most characters of a request key (method, host, paths) a `BoundedCache` keeps."""

_T = TypeVar("_T")
_V = TypeVar("_V")


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
    anonymous: Anonymous
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


def view_mark(view: object) -> RouteSettings | Unmarked | None:
    """Return the mark of a view function, or of the class it was made from (`as_view`)."""
    found = read_mark(view)
    if isinstance(found, Unmarked):
        view_class = getattr(view, "view_class", None)
        if view_class is not None:
            return read_mark(view_class)
    return found


def idempotency(*, exempt: bool = False, **options: Unpack[RouteOptions]) -> Callable[[_T], _T]:
    """Mark an endpoint or view (a function, or a class-based view) with its idempotency settings.

    The target is returned as it is, so the decorator may go above or below the framework's
    route decorator.

    Args:
        exempt: the route is never tracked, whatever the path patterns say.
        options: `RouteSettings` fields: `required=True`, `retention=3600`, `wait=0`, ...
    """
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
    pattern matches is covered with the middleware's settings. A path is matched as the app
    routes it, without the mount prefix (`retrysafe._http.routing.PathMatcher`).

    Args:
        routes: pattern to `RouteSettings`, or None for "not covered".
    """

    def __init__(self, routes: Mapping[str, RouteSettings | None] | None = None) -> None:
        self._targets = list((routes or {}).values())
        self._matcher = PathMatcher(routes or {})

    def for_path(self, path: str) -> RouteSettings | None:
        """Return the settings the patterns give `path`."""
        found = self.match(path)
        return DEFAULT_ROUTE if isinstance(found, Unmarked) else found

    def match(self, path: str) -> RouteSettings | Unmarked | None:
        """Return the settings of the pattern that decides for `path` (a `RoutePath`, or a
        route's path), or `UNMARKED`."""
        index = self._matcher.find(path)
        return UNMARKED if index is None else self._targets[index]


class BoundedCache(dict[Hashable, _V]):
    """What was settled per request key, remembered: up to `size` keys (then it starts over),
    none longer than `_KEY_LONGEST` characters (a client's long path or host is settled each
    time and never kept), so it holds `size` times that at most.

    Args:
        size: how many keys to remember.
    """

    __slots__ = ("_size",)

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size

    def keep(self, key: Hashable, value: _V) -> _V:
        """Remember `value` for `key`, unless `key` is too long, and return it."""
        if _length(key) <= _KEY_LONGEST:
            if len(self) >= self._size:
                self.clear()
            self[key] = value
        return value


class RouteCache:
    """The settings of each routed request: the path patterns' with the route's mark over them.

    Each request key is settled once and remembered (a `BoundedCache` of `cache_size` keys),
    so the framework's routing is not repeated on every request.

    Args:
        routes: path patterns for unmarked routes, as the middleware's `routes=` takes them.
        cache_size: how many routed requests to remember.
    """

    def __init__(
        self, routes: Mapping[str, RouteSettings | None] | None = None, cache_size: int = 1024
    ) -> None:
        self.patterns = PathPatterns(routes)
        """The path patterns, for what else asks which pattern a path matches (OpenAPI)."""
        self._settled = BoundedCache[RouteSettings | None](cache_size)

    def settings(
        self, key: Hashable, path: str, find_mark: Callable[[], RouteSettings | Unmarked | None]
    ) -> RouteSettings | None:
        """Return the settings for `key`, from `path`'s pattern and `find_mark()` the first time.

        `path` is a `RoutePath`, the path the app routes with the whole path it came with; `key`
        tells apart what `path` and `find_mark` depend on (both paths, the method, the host)."""
        try:
            return self._settled[key]
        except KeyError:
            pass
        return self._settled.keep(key, merge(self.patterns.for_path(path), find_mark()))


def _length(key: Hashable) -> int:
    """Return the characters of `key`'s str and bytes parts: its paths and host."""
    parts = key if isinstance(key, tuple) else (key,)
    return sum(len(part) for part in parts if isinstance(part, str | bytes))


def missing_framework(module: str, framework: str) -> ImportError:
    """Return the one-line error of integration `module` imported without `framework` installed."""
    return ImportError(f"{module} needs {framework}: pip install {framework.lower()}")


@contextlib.contextmanager
def framework_imports(module: str, framework: str) -> Iterator[None]:
    """Guard the block where integration `module` imports `framework`: an `ImportError` there
    becomes the one-line error that says what to install (`missing_framework`), chained to it.

        with framework_imports(__name__, "Starlette"):
            from starlette.routing import Match, Mount
    """
    try:
        yield
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise missing_framework(module, framework) from error


async def unbound(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of a middleware made before the framework builds its stack, which binds it."""
    raise RuntimeError("This middleware is bound to its app when the framework builds its stack.")
