"""`redact_url`: every URL a command prints, or an error names, shows no secret (B35)."""

from __future__ import annotations

import pytest

from retrysafe import ConfigurationError, open_async_store, open_store
from retrysafe._urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/pay", "postgresql://app:***@db:5432/pay"),
        ("mysql://root@127.0.0.1/test?table=t", "mysql://root@127.0.0.1/test?table=t"),
        ("redis://:pw@cache:6379/0?prefix=p", "redis://:***@cache:6379/0?prefix=p"),
        ("amqp://guest:guest@mq:5672/", "amqp://guest:***@mq:5672/"),
        ("redis+cluster://u:p@h1:1,h2:2/", "redis+cluster://u:***@h1:1,h2:2/"),
        ("postgresql://db/pay?user=app&password=s3cret", "postgresql://db/pay?user=app&password=***"),
        ("postgresql://db/pay?sslpassword=k&sslmode=require", "postgresql://db/pay?sslpassword=***&sslmode=require"),
        ("redis://cache/0?auth_token=t0k&prefix=p", "redis://cache/0?auth_token=***&prefix=p"),
        ("mysql://u:p@a@db/test", "mysql://u:***@db/test"),  # an unescaped @ in the password
        ("sqlite:///var/app.db?table=t", "sqlite:///var/app.db?table=t"),
        ("memory://", "memory://"),
    ],
)  # fmt: skip
def test_b35_a_printed_url_shows_no_password(url: str, shown: str) -> None:
    """The password of `user:password@` and of options named like a secret become `***`;
    everything else, the user, hosts, database and other options, is shown as given."""
    assert redact_url(url) == shown


def test_b35_an_unparseable_url_shows_its_scheme_only() -> None:
    """A URL `urlsplit` refuses (an unclosed IPv6 bracket) cannot be redacted part by part: it
    shows its scheme, never the rest."""
    assert redact_url("postgresql://app:s3cret@[::1/pay") == "postgresql://(unparseable)"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:pw_SECRET@127.0.0.1:6379/15?socket_timeout=0",
        "redis://:pw_SECRET@127.0.0.1:99999/0",
        "redis://:pw_SECRET@127.0.0.1:6379/0?ssl_ca_certs=/ca.pem",
        "redis+cluster://:pw_SECRET@127.0.0.1:6379/5",
        "rediss+cluster://:pw_SECRET@127.0.0.1:6379/0?socket_timeout=-1",
        "postgresql://app:pw_SECRET@[::1/test",
        "redis://:pw_SECRET@127.0.0.1:6379/abc",
        "mongodb://admin:pw_SECRET@127.0.0.1/x",  # an unknown scheme
        "postgresql://app:pw_SECRET@127.0.0.1/test?replay_cache_bytes=10",  # without replay_cache
        "postgresql://app:pw_SECRET@127.0.0.1/t?encryption_key_env=A&encryption_key_env=B",
    ],
)
def test_b35_a_refused_store_url_is_a_configuration_error_without_its_password(url: str) -> None:
    """Every store URL that `open_store` and `open_async_store` refuse (a bad option, a port out
    of range, TLS options without TLS, a database a cluster does not have, a host that does not
    parse, a database that is not a number, which redis-py would take for database 0) raises
    `ConfigurationError`, and its message never shows the password."""
    for opener in (open_store, open_async_store):
        with pytest.raises(ConfigurationError) as refused:
            opener(url)
        assert "pw_SECRET" not in str(refused.value)
