"""What the ASGI and WSGI middleware both hold: the app, the store, the gate and the flow."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, TypeVar, Unpack

from retrysafe._engine import Decision
from retrysafe._flow import Admission, AsyncFlow, SyncFlow, observing
from retrysafe._flow.observing import Observation, decide
from retrysafe._http.flow import ScopeLimiter, answer
from retrysafe._http.problems import Response, store_unavailable, too_many_in_flight
from retrysafe._http.routing import Gate
from retrysafe._http.scope import Scoper
from retrysafe._http.settings import RouteSettings, Settings, SettingsOptions, logger
from retrysafe.observe import Observer

__all__ = ["MiddlewareBase"]

AppT = TypeVar("AppT")
RequestT = TypeVar("RequestT")
StoreT = TypeVar("StoreT")
FlowT = TypeVar("FlowT", SyncFlow, AsyncFlow)


class MiddlewareBase(Generic[AppT, RequestT, StoreT, FlowT]):
    """Make POST and PATCH requests with an `Idempotency-Key` header safe to retry.

    Args:
        app: the app to wrap.
        store: where records live (`retrysafe.open_async_store(url)` for ASGI,
            `retrysafe.open_store(url)` for WSGI).
        routes: path pattern to `RouteSettings` (or None: not covered), first match wins;
            `*` matches within one path segment, `**` anything. Unlisted paths use `settings`.
        route_settings: instead of `routes`, a function of the request (the ASGI scope, the
            WSGI environ) returning its `RouteSettings`, or None if it is not covered (for
            framework integrations that know their routes). It is called for requests whose
            method is in `methods`; for those without a key only if the hook has no
            `may_require_key` attribute or it is true (no route requires a key: they pass
            straight through).
        settings: a `Settings` to start from; `options` override its fields.
        observers: who to tell what the middleware does (`retrysafe.observe`), such as
            `PrometheusObserver()` or `OpenTelemetryObserver()`.
        options: any `Settings` field by name (`required=True`, `wait=0`, ...).
    """

    face: str = "asgi"
    """The face's name in what observers see (`retrysafe.observe.FACES`)."""

    def __init__(
        self,
        app: AppT,
        *,
        store: StoreT,
        routes: Mapping[str, RouteSettings | None] | None = None,
        route_settings: Callable[[RequestT], RouteSettings | None] | None = None,
        settings: Settings | None = None,
        observers: Sequence[Observer] = (),
        **options: Unpack[SettingsOptions],
    ) -> None:
        self.app = app
        self.store = store
        self._gate = Gate(settings, routes, route_settings, self._path, **options)
        self.settings = self._gate.settings
        self.observation = Observation(self.face, observers)
        """The observers, with the face's name (`retrysafe.observe`)."""
        self.flow: FlowT = self._new_flow(store, self.observation)
        self.counters = self.flow.counters
        """What the middleware did: executions, replays, and failures to store (B19)."""
        self._methods = self._gate.methods
        cap = self.settings.max_in_flight_per_scope
        self._limiter = None if cap is None else ScopeLimiter(cap)
        secret = Scoper.configured_secret(self.settings)
        self._scoper: Scoper | None = None if secret is None else Scoper(secret)
        """Hashes scopes (B8); None until the secret kept in the store is loaded."""

    def _store_failed(self, settings: Settings) -> Response | None:
        """Log a store failure; return the 503 to answer, or None to fail open (B20)."""
        decide("unavailable")  # failing open too: the request then runs untracked
        error = sys.exc_info()[1]
        logger.error(  # one line a request; the traceback at DEBUG only
            "The idempotency store failed (%s); fail_open=%s",
            error,
            settings.fail_open,
            exc_info=logger.isEnabledFor(logging.DEBUG),
            extra={"face": self.face, "retrysafe_event": "store_unavailable"},
        )
        return None if settings.fail_open else store_unavailable(settings)

    def _refusal(self, admitted: Admission, scope: str, settings: Settings) -> Response | None:
        """Return the answer to an admission that does not run the app: a replay, a refusal
        (`answer`), or the 429 of a scope at its in-flight cap (B36), whose claim the caller
        then releases. None: run the app, and `_leave(scope)` when it is done."""
        executes = admitted.decision is Decision.EXECUTE
        if executes and self._limiter is not None and not self._limiter.enter(scope):
            return too_many_in_flight(settings)  # observed as "rejected"
        observing.admitted(admitted.decision)
        return answer(admitted, settings)

    def _leave(self, scope: str) -> None:
        """Give back the in-flight slot `_refusal` took for `scope`."""
        if self._limiter is not None:
            self._limiter.leave(scope)

    @staticmethod
    def _path(request: RequestT, /) -> str:
        """Return the request's path (for `routes`)."""
        raise NotImplementedError

    @staticmethod
    def _new_flow(store: StoreT, observation: Observation) -> FlowT:
        """Return the flow that drives the store."""
        raise NotImplementedError
