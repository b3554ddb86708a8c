"""B24, B35: a password that a URL cannot carry as written (an unencoded `#`, `/`, `?`, `%` or
space in it) is never printed: not by `redact_url` (start-up lines), nor by an error that
repeats what libpq, redis-py or httpx said about the URL (they quote what they cannot parse)."""

from __future__ import annotations

import pytest

from retrysafe import ConfigurationError, StoreError, open_async_store, open_store
from retrysafe._urls import redact_url
from retrysafe.demo._postgres import open_postgres
from retrysafe.outbox.amqp import AmqpPublisher
from retrysafe.proxy._forward import ProxyApp

# Two halves: a driver that stops at the `#`, `/` or `?` quotes the first, the URL the second.
SECRETS = ("S3CRET", "XQZW")


def _assert_hidden(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:S3CRET#XQZW@127.0.0.1:5432/test", "postgresql://postgres:***@127.0.0.1:5432/test"),
        ("mysql://root:S3CRET/XQZW@127.0.0.1:3306/test", "mysql://root:***@127.0.0.1:3306/test"),
        ("redis://:S3CRET?XQZW@127.0.0.1:6379/15", "redis://:***@127.0.0.1:6379/15"),
        ("amqp://guest:S3CRET/XQZW@127.0.0.1:5672/", "amqp://guest:***@127.0.0.1:5672/"),
        ("redis+cluster://:S3CRET/XQZW@h1:1,h2:2/", "redis+cluster://:***@h1:1,h2:2/"),
        ("http://us/er:S3CRET@XQZW@up:80/", "http://***@up:80/"),
        ("postgresql://u:S3/CR#ET@XQZW@db/pay?password=p", "postgresql://u:***@db/pay?password=***"),
        ("postgresql:/postgres:S3CRETXQZW@db:5432/test", "postgresql:/postgres:***@db:5432/test"),
        ("postgresql://u:pw@db/pay?application_name=a@b", "postgresql://u:***@b"),  # over-masked
        ("AMQP://guest:S3CRETXQZW@mq/", "AMQP://guest:***@mq/"),  # the scheme as written
        ("sqlite:///var/a@b.db?table=t", "sqlite:///var/a@b.db?table=t"),
        ("mysql://root@127.0.0.1/test?ssl_ca=/a@b.pem", "mysql://root@127.0.0.1/test?ssl_ca=/a@b.pem"),
    ],
)  # fmt: skip
def test_b35_a_password_with_reserved_characters_is_masked_up_to_its_last_at(
    url: str, shown: str
) -> None:
    """`urlsplit` ends the netloc at the first `/`, `?` or `#`, inside the password: the part
    from `scheme://` to the last `@` is masked instead (the user shown if it is plain)."""
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:S3CRET%XQZW@127.0.0.1:5432/test",
        "postgresql://postgres:S3CRET XQZW@127.0.0.1:5432/test",
        "postgresql:/postgres:S3CRETXQZW@127.0.0.1:5432/test",
        "postgresql://postgres:S3CRET/XQZW@127.0.0.1:5432/test",
        "postgresql://postgres:S3CRET?XQZW@127.0.0.1:5432/test",
        "redis://:S3CRET#XQZW@127.0.0.1:6379/15",
        "redis://:S3CRET/XQZW@127.0.0.1:6379/15",
        "redis://:S3CRET?XQZW@127.0.0.1:6379/15",
        "mysql://root:S3CRET/XQZW@127.0.0.1:3306/test",
        "mysql://root:S3CRET?XQZW@127.0.0.1:3306/test",
        "redis+cluster://:S3CRET/XQZW@127.0.0.1:1/",
        "redis+cluster://:S3CRET?XQZW@127.0.0.1:1/",
        "redis+cluster://:S3CRET#XQZW@127.0.0.1:1/",
    ],
)
def test_b24_b35_a_store_url_that_does_not_parse_names_no_part_of_its_password(url: str) -> None:
    """Each of these is refused at once, as a `ConfigurationError` whose message holds no part
    of the password: not libpq's or redis-py's quote of it, not the path or option name that
    `urlsplit` made of its tail."""
    for opener in (open_store, open_async_store):
        with pytest.raises(ConfigurationError) as refused:
            opener(url)
        _assert_hidden(str(refused.value))


@pytest.mark.parametrize(
    "url",
    [
        "POSTGRESQL://postgres:S3CRETXQZW@127.0.0.1:5432/test",
        "postgresql://postgres:S3CRET%XQZW@127.0.0.1:5432/test",
    ],
)
def test_b24_b35_the_demo_database_error_names_no_part_of_its_password(url: str) -> None:
    """`retrysafe demo --store` with a URL libpq cannot parse: its error repeats libpq's
    message without the URL or the password libpq quoted."""
    with pytest.raises((ConfigurationError, StoreError)) as refused:
        open_postgres(url)
    _assert_hidden(str(refused.value))


def test_b24_b35_an_upstream_or_broker_url_error_names_no_part_of_its_password() -> None:
    """The proxy's upstream (httpx quotes the port it could not read: the password's first
    half) and the outbox's AMQP broker URL of the wrong scheme."""
    with pytest.raises(ConfigurationError) as refused:
        ProxyApp("http://user:S3CRET/XQZW@127.0.0.1:9/")
    _assert_hidden(str(refused.value))
    with pytest.raises(ConfigurationError) as refused:
        AmqpPublisher("AMQP://guest:S3CRETXQZW@127.0.0.1:5672/")
    _assert_hidden(str(refused.value))
