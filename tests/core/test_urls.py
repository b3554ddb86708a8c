"""`redact_url`: every URL a command prints, or an error names, shows no secret (B35)."""

from __future__ import annotations

import pytest

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
