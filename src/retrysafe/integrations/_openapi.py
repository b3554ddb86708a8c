"""What a covered route adds to its API description, framework-neutral.

The `Idempotency-Key` request header, the replay header on stored responses, and the RFC 9457
problems the middleware answers with (`problem_docs`; a transactional route's include an
aborted transaction). Each integration writes them in its framework's OpenAPI objects, for the
routes marked or matched by a path pattern (`documented_route`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from retrysafe._http import PROBLEMS, RouteSettings, Settings, problem_type
from retrysafe.integrations._routes import DEFAULT_ROUTE, Unmarked, merge

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "PROBLEM_SCHEMA",
    "ProblemDoc",
    "describe_operation",
    "documented_route",
    "key_description",
    "problem_docs",
    "replay_description",
]


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


def problem_docs(settings: Settings, *, transactional: bool = False) -> tuple[ProblemDoc, ...]:
    """Return the problems a route with `settings` may answer with, one per status; a
    `transactional` route's handler may also leave its transaction aborted."""
    slugs = ["invalid-key"]
    if settings.required:
        slugs.append("key-required")
    if settings.anonymous == "reject" or settings.scope_function is not None:
        slugs.append("scope-missing")
    slugs += ["request-in-flight", "response-not-stored", "body-too-large", "key-mismatch"]
    if settings.max_in_flight_per_scope is not None:
        slugs.append("too-many-in-flight")
    slugs.append("store-unavailable")
    if transactional:
        slugs.append("transaction-aborted")
    by_status: dict[int, list[str]] = {}
    for slug in slugs:
        status = settings.mismatch_status if slug == "key-mismatch" else PROBLEMS[slug][0]
        link = f"{PROBLEMS[slug][1]} ([{slug}]({problem_type(slug, settings)}))."
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
    operation: dict[str, Any],
    settings: Settings,
    problem_schema: Mapping[str, Any],
    *,
    transactional: bool = False,
) -> None:
    """Add to an OpenAPI operation (JSON) what a route with `settings` adds to its API.

    The `Idempotency-Key` header parameter (added, or the declared one corrected), the replay
    header on success responses, and the problem+json answers (`problem_docs`, a
    `transactional` route's included) with `problem_schema` (the schema, or a `$ref` to it),
    merged into responses the operation already has. Describing an operation twice changes
    nothing.
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
    for problem in problem_docs(settings, transactional=transactional):
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
