"""The console's routes: the pages and the JSON API, both over the same data (`_data`).

Store calls are blocking (the console holds a sync store, as the `keys` commands do): each runs
in Starlette's thread pool. A refused request answers problem+json on the API and an error page
on the pages, with the same status and detail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, TypeVar, cast
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from retrysafe._errors import ConfigurationError, IdempotencyError
from retrysafe._record import Identity
from retrysafe.cli._common import json_text
from retrysafe.console import _data, _pages, _refs
from retrysafe.console._auth import (
    AUTH_KIND,
    CSRF_FIELD,
    CSRF_HEADER,
    TokenGate,
    csrf_token,
    origin_of,
    problem,
)
from retrysafe.console._data import ConsoleError, RecordChangedError
from retrysafe.console._limits import SummaryCache, read_body
from retrysafe.stores import Store

__all__ = ["create_app"]

logger = logging.getLogger("retrysafe.console")
T = TypeVar("T")
Data = dict[str, object]
_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Same-origin, not no-referrer: with no-referrer, Chromium sends `Origin: null` on the
    # pages' own form POSTs, which the cross-site check must refuse.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_MAX_LIMIT: Final = 1000
_NAMES: Final = ("ref", "namespace", "scope", "key")


def create_app(store: Store, token: str, *, public_origin: str | None = None) -> ASGIApp:
    """Return the console as an ASGI app over `store`; every URL needs `token`.

    The caller owns the store (opens it before and closes it after serving). Behind a TLS
    terminator, or a proxy that rewrites Host, give `public_origin`, the URL browsers open
    (`https://console.example`): a POST must come from that origin, and an https one makes the
    session cookie `Secure`.

    Raises:
        ConfigurationError: `public_origin` is not an http(s) origin.
    """
    try:
        origin = None if public_origin is None else origin_of(public_origin)
    except ValueError as error:
        raise ConfigurationError(f"public_origin: {error}") from None
    console = _Console(store, token)
    routes = [
        Route("/", console.overview),
        Route("/records", console.records),
        Route("/record", console.record),
        Route("/record/delete", console.confirm_delete, methods=["GET"]),
        Route("/record/delete", console.delete_form, methods=["POST"]),
        Route("/purge", console.confirm_purge, methods=["GET"]),
        Route("/purge", console.purge_form, methods=["POST"]),
        Route("/api/summary", console.api_summary),
        Route("/api/records", console.api_records),
        Route("/api/record", console.api_record),
        Route("/api/record/delete", console.api_delete, methods=["POST"]),
        Route("/api/purge", console.api_purge, methods=["POST"]),
    ]
    handlers = {
        ConsoleError: _refused,  # a URL the endpoint refuses before it reads the store
        HTTPException: _unrouted,  # no such page (404), or not with this method (405)
    }
    return _SecurityHeaders(
        TokenGate(
            Starlette(routes=routes, exception_handlers=handlers),
            token=token,
            clock=store.clock,
            public_origin=origin,
        )
    )


class _Console:
    """The endpoints, bound to one store and token."""

    def __init__(self, store: Store, token: str) -> None:
        self.store = store
        self.csrf = csrf_token(token)
        self.summaries = SummaryCache(store.clock)

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        """Run a data function on the store in a worker thread; a store failure is a 503, any
        other error a 500 that says no more than that (its traceback goes to the log)."""
        try:
            return await run_in_threadpool(work, self.store, *args)
        except ConsoleError:
            raise
        except (IdempotencyError, OSError) as error:
            raise ConsoleError(503, f"The store failed: {type(error).__name__}: {error}") from None
        except Exception:
            logger.exception("The console failed to read the store (%s)", work.__name__)
            raise ConsoleError(500, "The console failed; its log has the error.") from None

    async def _change(self, work: Callable[..., T], *args: object) -> T:
        """Run a data function that changes the store: the kept overview is forgotten."""
        try:
            return await self._run(work, *args)
        finally:
            self.summaries.forget()

    async def _summary(self) -> Data:
        return await self.summaries.get(lambda: self._run(_data.summary))

    # The pages.

    async def overview(self, request: Request) -> Response:
        return await _page(self._summary(), _pages.overview_page)

    async def records(self, request: Request) -> Response:
        return await _page(
            self._run(_data.namespace_records, *_listing(request)), _pages.records_page
        )

    async def record(self, request: Request) -> Response:
        return await _page(self._run(_data.record_detail, _identity(request)), _pages.record_page)

    async def confirm_delete(self, request: Request) -> Response:
        def render(record: Data) -> str:
            return _pages.confirm_delete_page(record, self.csrf)

        return await _page(self._run(_data.record_detail, _identity(request)), render)

    async def delete_form(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        identity = _identity_in(form)
        if form.get("confirm") != "yes":  # not confirmed: to the confirmation step
            return RedirectResponse(f"/record/delete?ref={_refs.identity_ref(identity)}", 303)
        try:
            deleted = await self._change(_data.delete_record, identity, form.get("version", ""))
        except RecordChangedError as changed:  # the confirmation again, for the record as it is
            page = _pages.confirm_delete_page(changed.record, self.csrf, changed=True)
            return HTMLResponse(page, status_code=changed.status)
        except ConsoleError as error:
            return _error_page(error.status, error.detail)
        return HTMLResponse(_pages.deleted_page(deleted))

    async def confirm_purge(self, request: Request) -> Response:
        return HTMLResponse(_pages.confirm_purge_page(self.csrf))

    async def purge_form(self, request: Request) -> Response:
        form = await self._checked_form(request)
        if isinstance(form, Response):
            return form
        if form.get("confirm") != "yes":
            return RedirectResponse("/purge", 303)
        return await _page(self._change(_data.purge_expired), _pages.purged_page)

    async def _checked_form(self, request: Request) -> dict[str, str] | Response:
        """Return a page's form, or the error page: a cookie needs the form's CSRF token."""
        form = await _form(request)
        if isinstance(form, Response):
            return form
        if request.scope.get(AUTH_KIND) != "bearer" and form.get(CSRF_FIELD) != self.csrf:
            return _error_page(403, "The form's CSRF token is missing or wrong: reload the page.")
        return form

    # The JSON API.

    async def api_summary(self, request: Request) -> Response:
        return await _api(self._summary())

    async def api_records(self, request: Request) -> Response:
        return await _api(self._run(_data.namespace_records, *_listing(request)))

    async def api_record(self, request: Request) -> Response:
        return await _api(self._run(_data.record_detail, _identity(request)))

    async def api_delete(self, request: Request) -> Response:
        body = await self._confirmed_json(request)
        if isinstance(body, Response):
            return body
        given: dict[str, object] = {name: body[name] for name in _NAMES if name in body}
        confirmed = body.get("version")
        if not all(isinstance(part, str) for part in (*given.values(), confirmed)):
            return problem(
                400,
                'The body needs the record\'s "version" (from /api/record) and its "ref", or '
                'its "namespace", "scope" and "key", each a string.',
            )
        return await _api(self._change(_data.delete_record, _identity_in(given), confirmed))

    async def api_purge(self, request: Request) -> Response:
        body = await self._confirmed_json(request)
        if isinstance(body, Response):
            return body
        return await _api(self._change(_data.purge_expired))

    async def _confirmed_json(self, request: Request) -> dict[str, object] | Response:
        """Return the JSON object body of a state change, or the problem to answer: a cookie
        needs the CSRF header, and the body must say `"confirm": true`."""
        if (
            request.scope.get(AUTH_KIND) != "bearer"
            and request.headers.get(CSRF_HEADER) != self.csrf
        ):
            return problem(403, f"A POST with the cookie needs the {CSRF_HEADER} header.")
        try:
            body = json.loads(await read_body(request))
        except ConsoleError as error:
            return _closing(problem(error.status, error.detail))
        except (ValueError, RecursionError):  # RecursionError: nested too deep
            return problem(400, "The body is not JSON: send a JSON object.")
        if not isinstance(body, dict):
            return problem(400, "The body is not a JSON object.")
        if body.get("confirm") is not True:
            return problem(400, 'Not confirmed: a state change needs "confirm": true in the body.')
        return body


async def _form(request: Request) -> dict[str, str] | Response:
    """Return a URL-encoded form's fields (the pages' forms), or the error page to answer."""
    try:
        body = await read_body(request)
    except ConsoleError as error:
        return _closing(_error_page(error.status, error.detail))
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        return _error_page(400, "The form is not UTF-8.")


def _closing(response: Response) -> Response:
    """Return `response`, closing the connection after it: the rest of the body is unread."""
    response.headers["connection"] = "close"
    return response


def _identity(request: Request) -> Identity:
    return _identity_in(request.query_params)


def _identity_in(params: Mapping[str, object]) -> Identity:
    """Return the record that `params` name: by `ref` (the pages' links and forms), or by
    `namespace`, `scope` and `key` (a person's URL, a script)."""
    if "ref" in params:
        namespace, scope, key = _parts(params["ref"], 3)
        return Identity(namespace, scope, key)
    missing = [name for name in ("namespace", "scope", "key") if name not in params]
    if missing:
        raise ConsoleError(
            400, f"Name a record by ref, or namespace, scope and key; missing {', '.join(missing)}."
        )
    return Identity(*(str(params[name]) for name in ("namespace", "scope", "key")))


def _parts(given: object, count: int) -> tuple[str, ...]:
    try:
        return _refs.parts_of(str(given), count)
    except ValueError as error:
        raise ConsoleError(400, f"ref {given!r} names nothing here: {error}.") from None


def _listing(request: Request) -> tuple[str, str, int]:
    params = request.query_params
    if "ref" in params:
        (namespace,) = _parts(params["ref"], 1)
    elif "namespace" in params:
        namespace = params["namespace"]
    else:
        raise ConsoleError(400, "The URL needs ?namespace=NAME.")
    try:
        limit = int(params.get("limit", "200"))
    except ValueError:
        raise ConsoleError(400, f"limit {params['limit']!r} is not a whole number.") from None
    if not 1 <= limit <= _MAX_LIMIT:
        raise ConsoleError(400, f"limit must be between 1 and {_MAX_LIMIT}.")
    return namespace, params.get("state", "all"), limit


async def _page(data: Awaitable[Data], render: Callable[[Data], str]) -> Response:
    """Await `data` (a coroutine of `_Console._run`) and render it, or an error page."""
    try:
        result = await data
    except ConsoleError as error:
        return _error_page(error.status, error.detail)
    return HTMLResponse(render(result))


async def _api(data: Awaitable[Data]) -> Response:
    """Await `data` and answer it as JSON, or as problem+json. The JSON is ASCII, with a
    non-finite float as a string (`json_text`): a key with a lone surrogate, a function that
    returned `inf`, are answered too."""
    try:
        result = await data
    except ConsoleError as error:
        return problem(error.status, error.detail)
    return Response(json_text(result), media_type="application/json")


async def _refused(request: Request, error: Exception) -> Response:
    """Answer a `ConsoleError` raised by an endpoint itself (a URL that lacks what it needs, a
    limit out of range): problem+json under /api/, the error page elsewhere."""
    refusal = cast(ConsoleError, error)  # the only class it is registered for
    if request.url.path.startswith("/api/"):
        return problem(refusal.status, refusal.detail)
    return _error_page(refusal.status, refusal.detail)


async def _unrouted(request: Request, error: Exception) -> Response:
    """Answer Starlette's own refusal (a path no route takes, a method the route does not),
    as `_refused` does, with the `Allow` header of a 405."""
    refusal = cast(HTTPException, error)
    status, detail = refusal.status_code, str(refusal.detail)
    answer = (
        problem(status, detail)
        if request.url.path.startswith("/api/")
        else _error_page(status, detail)
    )
    answer.headers.update(refusal.headers or {})
    return answer


def _error_page(status: int, detail: str) -> Response:
    return HTMLResponse(_pages.error_page(status, detail), status_code=status)


class _SecurityHeaders:
    """Adds the headers every answer carries: no caching, no framing, no
    script, no referrer sent to another site."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)  # the login's no-referrer stays
            await send(message)

        await self.app(scope, receive, send_with_headers)
