"""The Redis stores' URL options shared by one server and a cluster: timeouts, and TLS files;
and one server's URL parsed whole (`server_url`).

Timeouts: `socket_timeout` and `connect_timeout`, seconds, 5 by default, both more than 0
and at most a year (`stores.base.check_timeouts`).

TLS: which authority to trust, which certificate to show.

`rediss://` and `rediss+cluster://` connect with TLS and, by default, trust the system's
certificate authorities (Python's default context). A private authority, or a server that asks
for a client certificate (`tls-auth-clients yes`, Redis's default), needs files:

| option         | redis-py argument | meaning                                          |
|----------------|-------------------|--------------------------------------------------|
| `ssl_ca_certs` | `ssl_ca_certs`    | PEM file of the authorities to trust             |
| `ssl_certfile` | `ssl_certfile`    | PEM file of the client certificate to present    |
| `ssl_keyfile`  | `ssl_keyfile`     | PEM file of that certificate's private key       |
"""

from __future__ import annotations

import dataclasses
import re
from typing import cast
from urllib.parse import urlencode, urlsplit, urlunsplit

from retrysafe._errors import ConfigurationError
from retrysafe._urls import ENCODE_HINT, redact_url, userinfo_cut
from retrysafe.stores._async.redis_replicas import REPLICA_OPTIONS, replica_options
from retrysafe.stores.base import check_timeouts, query_options

__all__ = [
    "TLS_OPTIONS",
    "ServerURL",
    "refuse_cut_userinfo",
    "server_url",
    "timeouts",
    "tls_options",
    "tls_query",
]

TLS_OPTIONS: dict[str, type] = {"ssl_ca_certs": str, "ssl_certfile": str, "ssl_keyfile": str}
"""The store URL options of TLS, and their types."""

_SERVER_OPTIONS: dict[str, type] = {
    "prefix": str,
    "socket_timeout": float,
    "connect_timeout": float,
    "autopipeline": bool,
    **REPLICA_OPTIONS,
    **TLS_OPTIONS,
}


@dataclasses.dataclass(frozen=True, slots=True)
class ServerURL:
    """A one-server Redis store URL, parsed (the store's `from_url` says what each option does)."""

    url: str
    """The server's URL as redis-py takes it: the store's options left out, the TLS files in."""
    prefix: str
    autopipeline: bool
    socket_timeout: float
    connect_timeout: float
    replicas: dict[str, int]
    """`min_replicas` and `replica_timeout_ms` if given, as the store's keyword arguments."""


def server_url(url: str) -> ServerURL:
    """Parse `redis://host:6379/0?...` or `rediss://...`; refuse anything else, with a
    `ConfigurationError` that shows no password."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigurationError(
            f"A Redis store URL is redis:// or rediss://, not {redact_url(url)!r}."
        )
    refuse_cut_userinfo("Redis", url)
    if not re.fullmatch(r"/?|/\d+", parts.path):  # redis-py would use database 0 instead
        raise ConfigurationError(
            f"A Redis store URL's path is a database number (/0): {redact_url(url)!r}."
        )
    options = query_options(parts.query, _SERVER_OPTIONS, url=url)
    socket_timeout, connect_timeout = timeouts(options, url=url)
    replicas = replica_options(options)
    tls = tls_options(options, tls=parts.scheme == "rediss", url=url)
    return ServerURL(
        url=urlunsplit(parts._replace(query="")) + tls_query(tls),
        prefix=cast(str, options.get("prefix", "retrysafe")),
        autopipeline=cast(bool, options.get("autopipeline", True)),
        socket_timeout=socket_timeout,
        connect_timeout=connect_timeout,
        replicas=replicas,
    )


def refuse_cut_userinfo(store: str, url: str) -> None:
    """Refuse a URL whose password holds an unencoded `/`, `?` or `#`: redis-py would read
    part of it as the port, database or an option, and say so, quoting it."""
    if userinfo_cut(url):
        raise ConfigurationError(
            f"The user info of the {store} store URL {redact_url(url)!r} does not parse: "
            f"{ENCODE_HINT}."
        )


def tls_options(options: dict[str, object], *, tls: bool, url: str) -> dict[str, str]:
    """Return the TLS options found in a store URL's parsed query, as redis-py keyword
    arguments; refuse them on a URL without TLS, where they would silently do nothing."""
    found = {name: str(options[name]) for name in TLS_OPTIONS if name in options}
    if found and not tls:
        names = ", ".join(sorted(found))
        raise ConfigurationError(
            f"{names} need a TLS URL (rediss:// or rediss+cluster://), not {redact_url(url)!r}."
        )
    return found


def tls_query(found: dict[str, str]) -> str:
    """Return the TLS options as a query string redis-py's `from_url` reads ('' if none)."""
    return f"?{urlencode(found)}" if found else ""


def timeouts(options: dict[str, object], *, url: str) -> tuple[float, float]:
    """Return the socket and connect timeouts of a store URL's parsed query, in seconds."""
    socket_timeout = cast(float, options.get("socket_timeout", 5.0))
    connect_timeout = cast(float, options.get("connect_timeout", 5.0))
    seconds = {"socket_timeout": socket_timeout, "connect_timeout": connect_timeout}
    check_timeouts("Redis", seconds, url=url)
    return socket_timeout, connect_timeout
