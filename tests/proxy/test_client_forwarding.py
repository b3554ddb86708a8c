"""What the upstream learns of the client from `retrysafe proxy`: only what the proxy vouches
for. A client's own forwarding data (`Forwarded`, `X-Real-IP`, `X-Forwarded-*`...) never
reaches the upstream as if the proxy had set it (B37); `X-Forwarded-For` is appended to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.proxy.conftest import Proxy, Upstream

Start = Callable[[list[tuple[list[str], Path | None]]], list[Proxy]]
SPOOFED = {
    "Forwarded": "for=10.0.0.1;host=evil.example;proto=https",
    "X-Real-IP": "10.0.0.1",
    "X-Client-IP": "10.0.0.1",
    "True-Client-IP": "10.0.0.1",
    "X-Forwarded-For": "203.0.113.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Prefix": "/admin",
    "X-Forwarded-Server": "evil.example",
    "X-Forwarded-Ssl": "on",
}
"""Forwarding data a client sends, hoping the upstream takes it for the proxy's."""


def test_b37_a_clients_forwarding_data_does_not_reach_the_upstream(
    upstream: Upstream, proxies: Start
) -> None:
    """The upstream gets none of the client's `Forwarded`, `X-Real-IP`, `X-Client-IP`,
    `True-Client-IP` or `X-Forwarded-*` headers but `X-Forwarded-For`, which the proxy
    appends the client's address to; `X-Forwarded-Proto` and `-Host` are the proxy's."""
    proxy = proxies([(["--upstream", upstream.url, "--store", "memory://"], None)])[0]
    response = httpx.get(f"{proxy.url}/headers", headers=SPOOFED, timeout=20)
    assert response.status_code == 200, response.text
    seen = response.json()["headers"]
    forwarding = {name: value for name, value in seen if name.lower() in map(str.lower, SPOOFED)}
    assert forwarding == {
        "x-forwarded-for": "203.0.113.7, 127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": proxy.url.removeprefix("http://"),
    }
