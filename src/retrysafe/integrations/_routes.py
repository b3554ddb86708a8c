"""What every framework integration shares: route marks, path-pattern fallback, a small cache.

A mark is an attribute on the endpoint (or dependency) holding its `RouteSettings`, or None for
"not covered" (`exempt=True`). The hook of each integration finds the endpoint the framework
will route a request to, then combines, closest to the code last:

    defaults (the middleware's settings) <- path patterns (`routes=`) <- the route's mark

An unmarked route, or a request that matches no route, gets what the path patterns say.
`RouteCache` does that combining and remembers it per routed request; each hook only says
how a request is keyed and how its mark is found.

The OpenAPI helpers at the end say, framework-neutral, what a covered route adds to its API
description: the `Idempotency-Key` request header, the replay header on stored responses, and
the RFC 9457 problems the middleware answers with (`problem_docs`). Each integration writes
them in its framework's OpenAPI objects, for the routes marked or matched by a pattern.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Collection, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypedDict, TypeVar, Unpack

from retrysafe._http import PROBLEMS, OutcomePolicy, RouteSettings, Settings, compile_pattern
from retrysafe._http.asgi_io import Receive, Scope, Send
from retrysafe._http.settings import Anonymous
from retrysafe._keys import KeyPolicy

__all__ = [
    "DEFAULT_ROUTE",
    "MARK_ATTRIBUTE",
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_SCHEMA",
    "UNMARKED",
    "PathPatterns",
    "ProblemDoc",
    "RouteCache",
    "RouteOptions",
    "Unmarked",
    "describe_operation",
    "documented_route",
    "idempotency",
    "key_description",
    "mark",
    "merge",
    "missing_framework",
    "problem_docs",
    "read_mark",
    "replay_description",
    "route_from_options",
    "unbound",
    "view_mark",
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
        found = self.match(path)
        return DEFAULT_ROUTE if isinstance(found, Unmarked) else found

    def match(self, path: str) -> RouteSettings | Unmarked | None:
        """Return the settings of the first pattern matching `path`, or `UNMARKED`."""
        match = None if self._regex is None else self._regex.fullmatch(path)
        if match is None or match.lastgroup is None:
            return UNMARKED
        return self._targets[int(match.lastgroup[1:])]


class RouteCache:
    """The settings of each routed request: the path patterns' with the route's mark over them.

    Each request key is settled once and remembered (up to `cache_size` keys, then it starts
    over), so the framework's routing is not repeated on every request.

    Args:
        routes: path patterns for unmarked routes, as the middleware's `routes=` takes them.
        cache_size: how many routed requests to remember.
    """

    def __init__(
        self, routes: Mapping[str, RouteSettings | None] | None = None, cache_size: int = 1024
    ) -> None:
        self._patterns = PathPatterns(routes)
        self._settled: dict[Hashable, RouteSettings | None] = {}
        self._size = cache_size

    def settings(
        self, key: Hashable, path: str, find_mark: Callable[[], RouteSettings | Unmarked | None]
    ) -> RouteSettings | None:
        """Return the settings for `key`, from `path`'s pattern and `find_mark()` the first time."""
        try:
            return self._settled[key]
        except KeyError:
            pass
        route_mark = find_mark()
        settings = merge(self._patterns.for_path(path), route_mark)
        if len(self._settled) >= self._size:
            self._settled.clear()
        self._settled[key] = settings
        return settings


def missing_framework(module: str, framework: str) -> ImportError:
    """Return the one-line error of integration `module` imported without `framework` installed."""
    return ImportError(f"{module} needs {framework}: pip install {framework.lower()}")


async def unbound(scope: Scope, receive: Receive, send: Send) -> None:
    """The app of a middleware made before the framework builds its stack, which binds it."""
    raise RuntimeError("This middleware is bound to its app when the framework builds its stack.")


def documented_route(
    settings: Settings,
    pattern: RouteSettings | Unmarked | None,
    mark_: RouteSettings | Unmarked | None,
) -> Settings | None:
    """Return the settings an API description shows for a route, or None to show nothing.

    A route is shown as covered when its own mark or a path pattern covers it; routes covered
    only because nothing says otherwise are left as they are, as the frameworks' docs expect.
    """
    if isinstance(pattern, Unmarked) and isinstance(mark_, Unmarked):
        return None
    route = merge(DEFAULT_ROUTE if isinstance(pattern, Unmarked) else pattern, mark_)
    return None if route is None else settings.with_route(route)


PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "ProblemDetails",
    "type": "object",
    "description": "An RFC 9457 problem: `type` links to the published policy.",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}
"""The JSON Schema of the problem+json bodies retrysafe answers with (B24)."""


@dataclass(frozen=True, slots=True)
class ProblemDoc:
    """One status of the problems a covered route may answer with.

    Attributes:
        status: the HTTP status.
        description: the problems of this status, each linked to its published policy.
        retry_after: the answer carries `Retry-After`.
        replayed: the answer carries the replay header.
    """

    status: int
    description: str
    retry_after: bool = False
    replayed: bool = False


def problem_docs(settings: Settings) -> tuple[ProblemDoc, ...]:
    """Return the problems a route with `settings` may answer with, one per status."""
    slugs = ["invalid-key"]
    if settings.required:
        slugs.append("key-required")
    if settings.anonymous == "reject" or settings.scope_function is not None:
        slugs.append("scope-missing")
    slugs += ["request-in-flight", "response-not-stored", "body-too-large", "key-mismatch"]
    if settings.max_in_flight_per_scope is not None:
        slugs.append("too-many-in-flight")
    slugs.append("store-unavailable")
    by_status: dict[int, list[str]] = {}
    for slug in slugs:
        status = settings.mismatch_status if slug == "key-mismatch" else PROBLEMS[slug][0]
        link = f"{PROBLEMS[slug][1]} ([{slug}]({settings.problem_base_url}{slug}))."
        by_status.setdefault(status, []).append(link)
    return tuple(
        ProblemDoc(
            status,
            " ".join(links),
            retry_after=status in (409, 429, 503),
            replayed=status == 410,
        )
        for status, links in sorted(by_status.items())
    )


def key_description(settings: Settings) -> str:
    """Return the description of the `Idempotency-Key` request header under `settings`."""
    form = (
        'a quoted string (`"8e03978e-40d5-43e8-bc93-6894a57f9324"`)'
        if settings.key_policy.strict
        else 'a quoted string (`"8e03978e-..."`) or a bare value'
    )
    return (
        f"{'Required' if settings.required else 'Optional'}. A unique value per operation "
        f"(a UUID), {form}. Send the same value when retrying, and the operation runs once: a "
        f"retry gets the first response again, marked `{settings.replay_header}: true`."
    )


def replay_description() -> str:
    """Return the description of the replay header on a stored response."""
    return (
        "`true` on a replayed response: the request ran before with this Idempotency-Key, and "
        "this is its stored response."
    )


_RETRY_AFTER: Final = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer"},
}


def describe_operation(
    operation: dict[str, Any], settings: Settings, problem_schema: Mapping[str, Any]
) -> None:
    """Add to an OpenAPI operation (JSON) what a route with `settings` adds to its API.

    The `Idempotency-Key` header parameter (added, or the declared one corrected), the replay
    header on success responses, and the problem+json answers (`problem_docs`) with
    `problem_schema` (the schema, or a `$ref` to it), merged into responses the operation
    already has. Describing an operation twice changes nothing.
    """
    parameters = operation.setdefault("parameters", [])
    header = next(
        (
            p
            for p in parameters
            if p.get("in") == "header" and str(p.get("name", "")).lower() == "idempotency-key"
        ),
        None,
    )
    if header is None:
        header = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
        parameters.append(header)
    header["required"] = settings.required
    header["description"] = key_description(settings)
    replay = {"description": replay_description(), "schema": {"type": "string", "enum": ["true"]}}
    responses = operation.setdefault("responses", {})
    for status, response in responses.items():
        if status.startswith("2") and "$ref" not in response:
            response.setdefault("headers", {})[settings.replay_header] = replay
    for problem in problem_docs(settings):
        response = responses.setdefault(str(problem.status), {"description": ""})
        if "$ref" in response:
            continue  # the app's own shared response: left as it is
        described = response.get("description", "")
        if problem.description not in described:
            response["description"] = "; ".join(filter(None, [described, problem.description]))
        content = response.setdefault("content", {})
        content[PROBLEM_MEDIA_TYPE] = {"schema": copy.deepcopy(dict(problem_schema))}
        if problem.retry_after:
            response.setdefault("headers", {})["Retry-After"] = copy.deepcopy(_RETRY_AFTER)
        if problem.replayed:
            response.setdefault("headers", {})[settings.replay_header] = dict(replay)
