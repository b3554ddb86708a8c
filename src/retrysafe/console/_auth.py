"""Who may use the console: the bearer token on every URL, a cookie for the browser, and no
state change from another site.

- Every request (page, API, unknown path) carries the token as `Authorization: Bearer TOKEN`
  or the session cookie, or answers 401 problem+json.
- A browser logs in once with `?token=TOKEN` on any page: the answer sets an HttpOnly,
  SameSite=Strict cookie (`Secure` over https) and redirects to the same page without the
  token in its URL, by its path alone (behind a TLS terminator the console sees http). The
  cookie is a random session id that this console process keeps for SESSION_SECONDS: not
  derived from the token, so it dies with its session or the process. (A browser sends it to
  every service on the same host name, whatever the port: see docs/console.md.)
- A POST is refused (403) when the browser says it comes from another site or origin
  (`Sec-Fetch-Site`, `Origin`: the console's own is its public origin when one is given,
  else the request's scheme and Host); one authenticated by the cookie must also carry the CSRF
  token the pages put in their forms (double submit: a form field or `X-CSRF-Token`), which
  another site cannot read. A POST with the bearer header carries no ambient credential.
"""

from __future__ import annotations

import hashlib
import hmac
import http
import secrets
from typing import Final
from urllib.parse import quote, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from retrysafe._clock import Clock, SystemClock
from retrysafe._http.problems import problem_response

__all__ = [
    "AUTH_KIND",
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "SESSION_SECONDS",
    "TokenGate",
    "csrf_token",
    "origin_of",
    "problem",
]

COOKIE: Final = "retrysafe_console"
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "x-csrf-token"
AUTH_KIND: Final = "retrysafe.console.auth"
"""The scope key that says how a request was authenticated: `bearer` or `cookie`."""
SESSION_SECONDS: Final = 12 * 3600
"""How long a browser's login lasts: its cookie is refused after that (and after a restart)."""
_SAFE_METHODS: Final = frozenset({"GET", "HEAD"})
_SAME_ORIGIN: Final = frozenset({"same-origin", "none"})  # `none`: typed or bookmarked


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """Return an RFC 9457 problem+json response (`type` about:blank, the status's phrase)."""
    answer = problem_response("about:blank", http.HTTPStatus(status).phrase, status, detail)
    response = Response(answer.body, status_code=answer.status)
    for name, value in answer.headers:
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    response.headers.update(headers or {})
    return response


def csrf_token(token: str) -> str:
    """Return the CSRF token the pages embed in their forms (derived from the bearer token)."""
    return _derived(token, "csrf")


def origin_of(url: str) -> str:
    """Return the origin a browser sends for pages served at `url` (`https://host[:port]`,
    lower case, without a default port), or raise ValueError saying why `url` is not one."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise ValueError(f"{url!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{url!r} is not an origin: give the scheme and host only")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _derived(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


class TokenGate:
    """Pure ASGI middleware in front of the console: the token check, the login by `?token=`,
    and the cross-site refusal of POSTs (see the module docstring).

    Args:
        app: the console's routes.
        token: the bearer token.
        clock: the time that ends sessions (the store's clock).
        public_origin: the origin browsers use (`origin_of`), behind a TLS terminator or a
            proxy that rewrites Host: the only Origin a POST may carry; `https` makes the
            cookie `Secure`. None: the request's own scheme and Host.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str,
        clock: Clock | None = None,
        public_origin: str | None = None,
    ) -> None:
        self.app = app
        self.token = token
        self.clock = clock or SystemClock()
        self.public_origin = public_origin
        # The logins' session ids, each with when it ends: the console's state, not a
        # request's; one event loop reads and writes it.
        self.sessions: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 or 403, or redirect a login, or pass the request on with its auth kind."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and request.method in _SAFE_METHODS:
            await self._login(request, given)(scope, receive, send)
            return
        kind = self._authenticated(request)
        if kind is None:
            await _unauthorized(request)(scope, receive, send)
            return
        if request.method not in _SAFE_METHODS:
            refusal = _cross_site(request, self._origin(request))
            if refusal is not None:
                await problem(403, refusal)(scope, receive, send)
                return
        scope[AUTH_KIND] = kind
        await self.app(scope, receive, send)

    def _authenticated(self, request: Request) -> str | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _equal(credentials.strip(), self.token):
            return "bearer"
        ends = self.sessions.get(request.cookies.get(COOKIE, ""))
        if ends is not None and self.clock.now() < ends:
            return "cookie"
        return None

    def _origin(self, request: Request) -> str:
        """Return the console's own origin, as the browser names it."""
        if self.public_origin is not None:
            return self.public_origin
        return f"{request.url.scheme}://{request.headers.get('host', '')}"

    def _login(self, request: Request, given: str) -> Response:
        if not _equal(given, self.token):
            return _unauthorized(request, "The token in the URL is not this console's.")
        rest = request.query_params.multi_items()
        query = urlencode([(name, value) for name, value in rest if name != "token"])
        response = RedirectResponse(_same_page(request.scope, query), 303)
        response.set_cookie(
            COOKIE,
            self._new_session(),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            path="/",
            secure=self._origin(request).startswith("https:"),
        )
        response.headers["cache-control"] = "no-store"
        response.headers["referrer-policy"] = "no-referrer"  # the URL held the token
        return response

    def _new_session(self) -> str:
        """Return a new session id, kept for SESSION_SECONDS; forget the ended ones."""
        now = self.clock.now()
        for ended in [sid for sid, ends in self.sessions.items() if ends <= now]:
            del self.sessions[ended]
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_SECONDS
        return session


def _same_page(scope: Scope, query: str) -> str:
    """Return the request's page as a relative URL with `query`: its path, never `//host`
    (a browser reads `//` or `/\\` as another host)."""
    path = "/" + str(scope["path"]).lstrip("/\\")
    return quote(path, safe="/:@!$&'()*+,;=-._~") + (f"?{query}" if query else "")


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _unauthorized(request: Request, detail: str | None = None) -> Response:
    detail = detail or (
        f"{request.url.path} needs the console's token: send 'Authorization: Bearer TOKEN', "
        "or open any page once with ?token=TOKEN."
    )
    return problem(401, detail, {"www-authenticate": 'Bearer realm="retrysafe console"'})


def _cross_site(request: Request, own: str) -> str | None:
    """Return why a state-changing request is refused as cross-site, or None: a browser's
    `Sec-Fetch-Site` must say same-origin, and its `Origin` must be `own`."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in _SAME_ORIGIN:
        return (
            f"Refused a {fetch_site} {request.method}: the console changes state only "
            "from its own pages."
        )
    origin = request.headers.get("origin")
    if origin is not None and origin != own:
        return (
            f"Refused a {request.method} from origin {origin!r}: the console changes "
            "state only from its own pages."
        )
    return None
