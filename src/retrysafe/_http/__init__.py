"""The sans-I/O HTTP layer shared by the ASGI and WSGI middleware.

Values in, values out: settings and route matching, key and body checks, fingerprints and
scopes, problem+json responses (RFC 9457), the stored-outcome codec, the outcome policy and the
response capture. No sockets, no `await`, no clock; `retrysafe.asgi` and `retrysafe.wsgi` drive
these with their own I/O, and framework integrations can drive them too.

    settings   Settings, RouteSettings, SettingsOptions, RequestView, the default scope
    routing    Router: path patterns or a hook's answer -> the request's Settings
    problems   problem+json responses and the checks before a claim (key, body size)
    outcome    ResponseCapture, the outcome policy, the stored form, the replay
    flow       the answer to an admission, record identities, the per-scope cap
    asgi_io    the ASGI plumbing: types, key and body, whole responses
    wsgi_io    the WSGI plumbing: environ to request, body, whole responses

The flow of a covered request with a key (docs/http.md has the published policy):

    read_key  ->  check_content_length / body limit  ->  RequestView  ->  identity + fingerprint
      -> retrysafe._flow admission: execute | replay | mismatch | in flight -> answer()
      -> execute: run the app with the buffered body under the flow's execution, capture the
         response (ResponseCapture), outcome_to_store(): complete(outcome) or release
"""

from __future__ import annotations

from retrysafe._http.flow import ScopeLimiter, answer, new_identity
from retrysafe._http.outcome import (
    ResponseCapture,
    StoredResponse,
    decode_outcome,
    encode_omitted,
    encode_outcome,
    outcome_to_store,
    replay_response,
)
from retrysafe._http.problems import (
    PROBLEMS,
    TRANSACTION_PROBLEM_BASE_URL,
    Response,
    body_unavailable,
    check_content_length,
    in_flight,
    mismatch,
    problem,
    problem_response,
    problem_type,
    read_key,
    reason_phrase,
    store_unavailable,
    too_large,
    too_many_in_flight,
)
from retrysafe._http.routing import Gate, Router, compile_pattern, hook_may_require_key
from retrysafe._http.scope import SECRET_ENV, Scoper, principal_of
from retrysafe._http.settings import (
    ANONYMOUS_SCOPE,
    DEFAULT_PROBLEM_BASE_URL,
    DEFAULT_STORED_HEADERS,
    KEY_HEADER,
    MIB,
    NEVER_STORED_HEADERS,
    REPRESENTATION_HEADERS,
    Header,
    OutcomePolicy,
    RequestView,
    RouteSettings,
    Settings,
    SettingsOptions,
    logger,
)

__all__ = [
    "ANONYMOUS_SCOPE",
    "DEFAULT_PROBLEM_BASE_URL",
    "DEFAULT_STORED_HEADERS",
    "KEY_HEADER",
    "MIB",
    "NEVER_STORED_HEADERS",
    "PROBLEMS",
    "REPRESENTATION_HEADERS",
    "SECRET_ENV",
    "TRANSACTION_PROBLEM_BASE_URL",
    "Gate",
    "Header",
    "OutcomePolicy",
    "RequestView",
    "Response",
    "ResponseCapture",
    "RouteSettings",
    "Router",
    "ScopeLimiter",
    "Scoper",
    "Settings",
    "SettingsOptions",
    "StoredResponse",
    "answer",
    "body_unavailable",
    "check_content_length",
    "compile_pattern",
    "decode_outcome",
    "encode_omitted",
    "encode_outcome",
    "hook_may_require_key",
    "in_flight",
    "logger",
    "mismatch",
    "new_identity",
    "outcome_to_store",
    "principal_of",
    "problem",
    "problem_response",
    "problem_type",
    "read_key",
    "reason_phrase",
    "replay_response",
    "store_unavailable",
    "too_large",
    "too_many_in_flight",
]
