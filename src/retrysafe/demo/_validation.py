"""Input checks for the demo API: every field named, nothing stored when one is wrong."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["FieldError", "PaymentInput", "UserInput", "parse_payment", "parse_tenant", "parse_user"]

MAX_AMOUNT = 10**12  # minor units; far above any demo charge, well inside BIGINT
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s]+")
# RFC 6750's b64token, its `=` padding at most base64's two: a tenant id is at most 130
# characters, which every database's tenant column holds (MySQL's is a VARCHAR(255)).
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]{1,128}={0,2}")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with the input: where (`field`, or `body`) and what."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """Return the entry of the problem's `errors` list."""
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class PaymentInput:
    """A valid `POST /payments` body."""

    customer: str
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class UserInput:
    """A valid `POST /users` body."""

    email: str
    name: str


def parse_tenant(authorization: str | None) -> str | None:
    """Return the tenant in `Authorization: Bearer <token>`; None if absent or malformed."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        return None
    return token


def parse_payment(body: bytes) -> PaymentInput | list[FieldError]:
    """Return the payment in `body`, or every reason it is invalid."""
    data = _object(body)
    if isinstance(data, list):
        return data
    errors = _unknown(data, {"customer", "amount", "currency"})
    customer = _text(data, "customer", errors, max_length=100)
    amount = data.get("amount")
    if "amount" not in data:
        errors.append(FieldError("amount", "is required"))
    elif not isinstance(amount, int) or isinstance(amount, bool):
        errors.append(FieldError("amount", "must be an integer number of minor units"))
    elif not 0 < amount <= MAX_AMOUNT:
        errors.append(FieldError("amount", f"must be between 1 and {MAX_AMOUNT}"))
    currency = _text(data, "currency", errors, max_length=3)
    if currency is not None and not _CURRENCY.fullmatch(currency):
        errors.append(FieldError("currency", "must be a three-letter ISO 4217 code"))
    if errors or customer is None or currency is None or not isinstance(amount, int):
        return errors
    return PaymentInput(customer, amount, currency.upper())


def parse_user(body: bytes) -> UserInput | list[FieldError]:
    """Return the user profile in `body`, or every reason it is invalid."""
    data = _object(body)
    if isinstance(data, list):
        return data
    errors = _unknown(data, {"email", "name"})
    email = _text(data, "email", errors, max_length=254)
    if email is not None and not _EMAIL.fullmatch(email):
        errors.append(FieldError("email", "must be an email address"))
    name = _text(data, "name", errors, max_length=200)
    if errors or email is None or name is None:
        return errors
    # Addresses that differ only in case are one mailbox in practice: one profile per mailbox.
    return UserInput(email.lower(), name)


def _object(body: bytes) -> dict[str, object] | list[FieldError]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, a 5000-digit number
        return [FieldError("body", "is not valid JSON")]
    if not isinstance(data, dict):
        return [FieldError("body", "must be a JSON object")]
    return data


def _unknown(data: dict[str, object], known: set[str]) -> list[FieldError]:
    return [FieldError(name, "is not a known field") for name in sorted(set(data) - known)]


def _text(
    data: dict[str, object], name: str, errors: list[FieldError], *, max_length: int
) -> str | None:
    value = data.get(name)
    if name not in data:
        errors.append(FieldError(name, "is required"))
    elif not isinstance(value, str):
        errors.append(FieldError(name, "must be a string"))
    elif not value.strip():
        errors.append(FieldError(name, "must not be empty"))
    elif len(value) > max_length:
        errors.append(FieldError(name, f"must be at most {max_length} characters"))
    else:
        return value
    return None
