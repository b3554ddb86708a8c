"""A reverse proxy that gives any HTTP service Idempotency-Key semantics.

    from retrysafe import open_async_store
    from retrysafe.proxy import build_proxy

    app = build_proxy("http://127.0.0.1:3000", store=open_async_store("redis://..."), wait=0)

`ProxyApp` forwards every request to the upstream with httpx, streaming both bodies;
`build_proxy` wraps it in `retrysafe.asgi.IdempotencyMiddleware`, so a retried POST or PATCH
with the same key reaches the upstream once. `retrysafe proxy` serves it with uvicorn.

The proxy sees no authenticated user, so keys are scoped by the caller's credential header
(`scope_header`, default `Authorization`, hashed with the deployment's secret); a keyed request
without one gets the 400 `scope-missing` problem unless `anonymous="shared"` (B8).

Forwarding follows RFC 9110 section 7.6: hop-by-hop headers (Connection, Keep-Alive,
Transfer-Encoding, Upgrade, TE, Trailer, Proxy-*, and any header the Connection header names)
are dropped both ways (never `Host`, `Content-Length` or `Idempotency-Key`); the upstream gets
the client's headers, none of httpx's defaults or cookies; `Host` is the upstream's;
`X-Forwarded-For` gets the client's address appended, `X-Forwarded-Proto` and
`X-Forwarded-Host` say what the client asked for, and a client's other forwarding headers
(`Forwarded`, `X-Real-IP`, other `X-Forwarded-*`...) are dropped, whether spelled with `-` or
`_` (a WSGI upstream reads `X_Real_IP` as `X-Real-IP`). An upstream that cannot be
reached gives 502 problem+json, one that does not answer in time 504, one that breaks the
exchange 502. A connection to the upstream is reused only when nothing follows the last answer
on it (`retrysafe.proxy._upstream`).

Only origin-form request-targets are forwarded, always to the upstream's scheme, host and port;
anything else, a CONNECT, and a request with both Transfer-Encoding and Content-Length, is a 400
problem before the store is touched, a target over 8 KiB a 414 problem (B37), and a method not
in upper case (httpx would send `post` as POST, untracked) or a WebSocket upgrade a 501.

The middleware reports to `observers` (`retrysafe.observe`) as face `proxy`; `access_log=True`
adds one line per request on `retrysafe.proxy.access` with the decision it made (`AccessLog`).
`retrysafe proxy` adds the store check at start, outage and recovery lines, and `/metrics` and
`/healthz` on `--metrics-port` (`retrysafe.proxy._ops`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final, Unpack

from retrysafe._extras import missing_extra

try:
    import httpx
except ImportError as error:
    raise missing_extra("retrysafe.proxy", "cli", error) from error

from retrysafe._errors import ConfigurationError
from retrysafe._http import MIB, SettingsOptions
from retrysafe.asgi import ASGIApp, IdempotencyMiddleware
from retrysafe.observe import Observer
from retrysafe.proxy._access import AccessLog, Decisions
from retrysafe.proxy._forward import DEFAULT_DEADLINE, DEFAULT_TIMEOUT, ProxyApp
from retrysafe.proxy._framing import HOP_BY_HOP_HEADERS, end_to_end
from retrysafe.proxy._guard import DEFAULT_BODY_TIMEOUT, RequestGuard
from retrysafe.stores.base import AsyncStore

__all__ = ["HOP_BY_HOP_HEADERS", "ProxyApp", "build_proxy", "end_to_end"]

_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
"""An RFC 9110 token: what a header name is."""


def build_proxy(
    upstream: str,
    *,
    store: AsyncStore,
    client: httpx.AsyncClient | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
    observers: Sequence[Observer] = (),
    access_log: bool = False,
    **options: Unpack[SettingsOptions],
) -> ASGIApp:
    """Return the idempotent reverse proxy to `upstream`: `ProxyApp` behind the middleware.

    The store is closed at lifespan shutdown.

    Args:
        upstream: the base URL of the service.
        store: where records live (`retrysafe.open_async_store(url)`).
        client: the httpx client to forward with (default: one the proxy owns).
        timeout: how long a client waits for the upstream's answer (default 60 s); then it
            gets a 504, and a claimed request's call goes on in the background (B38).
        deadline: how long that call may run in all (default 300 s); past it, retries get the
            stored `outcome-unknown` problem. A streamed answer whose client takes nothing of
            it for as long is given up too.
        body_timeout: how long a request body may take to arrive (default 30 s); then 408.
        observers: who to tell what the middleware does (`retrysafe.observe`), as face
            `proxy`: a `PrometheusObserver`, say.
        access_log: log one line per request on `retrysafe.proxy.access` at INFO: client,
            method, path, status, the middleware's decision (`-` when it did not track the
            request) and duration.
        options: the middleware's settings (`required=True`, `wait=0`, `scope_header=...`).
    """
    scope_header = options.get("scope_header")
    if scope_header is not None and not _TOKEN.fullmatch(scope_header):
        raise ConfigurationError(
            f"The scope header is a header name (an RFC 9110 token such as X-API-Key), "
            f"not {scope_header!r}."
        )
    buffer_size = options.get("max_response_size")
    if buffer_size is None:  # 0 is a size: every response with a body is streamed
        buffer_size = MIB
    proxy = ProxyApp(
        upstream,
        client=client,
        timeout=timeout,
        deadline=deadline,
        buffer_size=buffer_size,
        on_shutdown=[store.aclose],
    )
    if access_log:
        observers = [*observers, Decisions()]
    middleware = _ProxyMiddleware(proxy, store=store, observers=observers, **options)
    guarded = RequestGuard(
        middleware, max_body_size=middleware.settings.max_body_size, body_timeout=body_timeout
    )
    return AccessLog(guarded) if access_log else guarded


class _ProxyMiddleware(IdempotencyMiddleware):
    """The middleware, offering `ProxyApp` to keep a claim whose outcome is unknown (B38)."""

    outcome_unknown = True
    face = "proxy"
