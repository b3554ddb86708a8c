"""Values and types the decorator tests share; module-level, so replays can find their classes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid

import pydantic

FALSY: list[object] = [0, 0.0, "", [], {}, None, False, (), set(), b""]


class CardDeclinedError(Exception):
    """A business refusal that a caller wants replayed, not retried."""

    def __init__(self, card: str, reason: str) -> None:
        super().__init__(card, reason)
        self.card = card


class Colour(enum.Enum):
    """An enum whose members must replay as members."""

    RED = "red"
    BLUE = 2


@dataclasses.dataclass(frozen=True, slots=True)
class Receipt:
    """A frozen, slotted dataclass result."""

    order: str
    amount: decimal.Decimal
    at: dt.datetime
    lines: tuple[str, ...] = ()


@dataclasses.dataclass
class Box:
    """A plain dataclass holding another."""

    receipt: Receipt
    tags: set[str]
    by_id: dict[int, str]


class Payment(pydantic.BaseModel):
    """A pydantic model result."""

    id: uuid.UUID
    amount: int
    created_at: dt.datetime
    receipt: Receipt | None = None


RICH: list[object] = [
    1,
    -2.5,
    "text with \u00e9 and \x00",
    True,
    [1, [2, (3, 4)]],
    {"a": {"b": [None]}},
    (1, "two", None),
    {1: "int key", (2, 3): "tuple key"},
    {"$rs": "a dict that looks tagged"},
    {1, 2, 3},
    frozenset({"x"}),
    b"\x00\xff bytes",
    bytearray(b"ba"),
    dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.UTC),
    dt.datetime(2024, 5, 1, 12, 30),
    dt.date(2024, 5, 1),
    dt.time(12, 30, 1, 5),
    dt.timedelta(days=1, seconds=2, microseconds=3),
    decimal.Decimal("12.30"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Colour.RED,
    Colour.BLUE,
    Receipt("o-1", decimal.Decimal("9.99"), dt.datetime(2024, 1, 1, tzinfo=dt.UTC), ("a", "b")),
    Box(Receipt("o-2", decimal.Decimal(1), dt.datetime(2024, 1, 2)), {"t"}, {1: "one"}),
    Payment(
        id=uuid.UUID(int=7),
        amount=500,
        created_at=dt.datetime(2024, 3, 3, tzinfo=dt.UTC),
        receipt=Receipt("o-3", decimal.Decimal(2), dt.datetime(2024, 1, 3)),
    ),
    [Receipt("o-4", decimal.Decimal(3), dt.datetime(2024, 1, 4))],
]
