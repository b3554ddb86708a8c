"""Optional dependencies: one clear line naming the extra to install when one is missing.

The core (`pip install retrysafe`) is the engine, the memory and SQLite stores, the ASGI and WSGI
middleware and the decorator. Every other face needs an extra:

| extra        | brings                                 | for                                     |
|--------------|----------------------------------------|-----------------------------------------|
| `cli`        | typer, rich, uvicorn, starlette, httpx | the `retrysafe` command, demo and proxy |
|              | (and the `prometheus` extra)           | (`proxy --metrics-port`)                |
| `httpx`      | httpx, tenacity                        | `retrysafe.client` transports           |
| `requests`   | requests, tenacity                     | `retrysafe.client.IdempotentAdapter`    |
| `redis`      | redis-py, hiredis                      | the Redis store                         |
| `postgres`   | psycopg 3, psycopg_pool                | the PostgreSQL store and transactions   |
| `mysql`      | PyMySQL, aiomysql                      | the MySQL store and transactions        |
| `sqlalchemy` | SQLAlchemy                             | `transactions.sqlalchemy`               |
| `prometheus` | prometheus-client                      | `retrysafe.observe.prometheus`          |
| `otel`       | opentelemetry-api                      | `retrysafe.observe.otel`                |
| `encryption` | cryptography                           | `?encryption_key_env=`, `Keyring`       |
| `amqp`       | pika                                   | the outbox relay's RabbitMQ publisher   |
| `nats`       | nats-py                                | `consumers.jetstream_message`           |
"""

from __future__ import annotations

__all__ = ["MissingExtraError", "missing_extra"]


class MissingExtraError(ImportError):
    """A face was imported without the extra that brings its dependencies."""


def missing_extra(feature: str, extra: str, error: ImportError) -> MissingExtraError:
    """Return the error to raise (`from error`) when `feature` cannot import its dependencies."""
    missing = f" (no module named {error.name!r})" if error.name else ""
    return MissingExtraError(
        f"{feature} needs the '{extra}' extra{missing}: pip install 'retrysafe[{extra}]'",
        name=error.name,
    )
