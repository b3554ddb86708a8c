"""Final exceptions replay as the same class with the same args, message and attributes (B28)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from retrysafe import ManualClock, OutcomeError, Record, Store, open_async_store
from retrysafe._decorator import idempotent

INITS: list[str] = []  # the __init__ calls of the exceptions below, by class name


class CardDeclinedError(Exception):
    """Formats its message from its arguments, as most custom exceptions do."""

    def __init__(self, code: int, reason: str = "insufficient funds") -> None:
        INITS.append(type(self).__name__)
        super().__init__(f"card declined ({code}): {reason}")
        self.code, self.reason = code, reason


class QuotaError(Exception):
    """Takes its argument by keyword only."""

    def __init__(self, *, limit: int) -> None:
        INITS.append(type(self).__name__)
        super().__init__(f"quota of {limit} reached")
        self.limit = limit


class ShutdownRequestedError(Exception):
    """An exception whose own __new__ formats the message (an `Exception`: one that is not is
    an interruption, never stored whatever `final_exceptions` lists, B40)."""

    signal: int

    def __new__(cls, signal: int) -> ShutdownRequestedError:
        INITS.append(cls.__name__)
        error = super().__new__(cls, f"shutdown on signal {signal}")
        error.signal = signal
        return error

    def __init__(self, signal: int) -> None:
        super().__init__(f"shutdown on signal {signal}")


class UnknownSkuError(KeyError):
    """A KeyError (whose str() quotes the key) with a keyword-only attribute."""

    def __init__(self, sku: str, *, shop: str) -> None:
        INITS.append(type(self).__name__)
        super().__init__(sku)
        self.shop = shop


class ReceiptMissingError(FileNotFoundError):
    """An OSError whose errno, strerror and filename make its message."""


class Handle:
    """A value JSON cannot hold."""

    def __str__(self) -> str:
        return "handle db-1"


class LockLostError(Exception):
    """Keeps an attribute JSON cannot hold beside one it can."""

    def __init__(self, holder: str) -> None:
        INITS.append(type(self).__name__)
        super().__init__(f"lock lost to {holder}")
        self.holder, self.handle = holder, Handle()


class ResourceError(Exception):
    """Takes an argument JSON cannot hold."""

    def __init__(self, resource: object) -> None:
        INITS.append(type(self).__name__)
        super().__init__(resource)


class GatewayError(Exception):
    """Keeps the gateway in a slot, and a private one (its name mangled)."""

    __slots__ = ("__attempt", "gateway")

    def __init__(self, gateway: str) -> None:
        super().__init__(f"refused by {gateway}")
        self.gateway, self.__attempt = gateway, 2

    @property
    def attempt(self) -> int:
        """The private slot, read."""
        return self.__attempt


class SlottedDeclinedError(GatewayError):
    """Keeps its code in a slot of its own, beside a slot of its base and a plain attribute."""

    __slots__ = ("code",)

    def __init__(self, code: str) -> None:
        super().__init__("acquirer")
        self.code, self.reason = code, "do not honor"


class GatewayResponse:
    """An SDK's response object: what an exception keeps, and JSON cannot hold."""

    def json(self) -> dict[str, str]:
        """The gateway's answer."""
        return {"reason": "insufficient funds"}


class DeclinedByGatewayError(Exception):
    """Keeps the gateway's response and formats its message from it, in `__str__`."""

    def __init__(self, response: GatewayResponse) -> None:
        super().__init__()
        self.response = response

    def __str__(self) -> str:
        return f"declined: {self.response.json()['reason']}"


FINAL: tuple[type[BaseException], ...] = (
    DeclinedByGatewayError,
    CardDeclinedError,
    QuotaError,
    ShutdownRequestedError,
    UnknownSkuError,
    ReceiptMissingError,
    LockLostError,
    ResourceError,
    SlottedDeclinedError,
    ExceptionGroup,
)


def first_and_replay(
    store: Store, make: Callable[[], BaseException], key: str = "k"
) -> tuple[BaseException, BaseException, list[int]]:
    """Return the exception a decorated call raises, the one its retry raises, and the runs."""
    runs: list[int] = []

    @idempotent(store, key="k", namespace="replayed", final_exceptions=FINAL)
    def call(k: str) -> None:
        runs.append(1)
        raise make()

    raised: list[BaseException] = []
    for _ in range(2):
        with pytest.raises(BaseException) as caught:  # noqa: PT011 - each is asserted below
            call(key)
        raised.append(caught.value)
    return raised[0], raised[1], runs


def assert_same(first: BaseException, again: BaseException) -> None:
    """Assert `again` is `first` replayed: same class, args and message, and the note."""
    assert type(again) is type(first)
    assert again.args == first.args
    assert str(again) == str(first)
    assert again.__notes__ == ["retrysafe: replayed from the first call with this key."]


def test_b28_replay_keeps_args_message_and_attributes_without_init(store: Store) -> None:
    """A custom __init__ is not run again: args, message and attributes are the first's."""
    INITS.clear()
    first, again, runs = first_and_replay(store, lambda: CardDeclinedError(402))
    assert runs == [1]
    assert INITS == ["CardDeclinedError"]
    assert_same(first, again)
    assert str(again) == "card declined (402): insufficient funds"
    assert isinstance(again, CardDeclinedError)
    assert (again.code, again.reason) == (402, "insufficient funds")


def test_b28_replay_of_keyword_only_init_keeps_its_attribute(store: Store) -> None:
    """An exception whose __init__ takes keyword-only arguments replays with its attribute."""
    first, again, runs = first_and_replay(store, lambda: QuotaError(limit=7))
    assert runs == [1]
    assert_same(first, again)
    assert isinstance(again, QuotaError)
    assert again.limit == 7


def test_b28_replay_of_exception_with_custom_new(store: Store) -> None:
    """An exception subclass with its own __new__ replays without running it again."""
    INITS.clear()
    first, again, runs = first_and_replay(store, lambda: ShutdownRequestedError(15))
    assert runs == [1]
    assert INITS == ["ShutdownRequestedError"]
    assert_same(first, again)
    assert str(again) == "shutdown on signal 15"
    assert isinstance(again, ShutdownRequestedError)
    assert again.signal == 15


def test_b28_replay_of_key_error_keeps_its_quoted_message(store: Store) -> None:
    """A KeyError subclass replays with the key as its arg, str() quoting it, and attributes."""
    first, again, runs = first_and_replay(store, lambda: UnknownSkuError("sku-1", shop="eu"))
    assert runs == [1]
    assert_same(first, again)
    assert str(again) == "'sku-1'"
    assert isinstance(again, UnknownSkuError)
    assert again.shop == "eu"


def test_b28_replay_of_os_error_keeps_errno_strerror_and_filename(store: Store) -> None:
    """An OSError replays with its errno, strerror, filename and so its message."""
    first, again, runs = first_and_replay(
        store, lambda: ReceiptMissingError(2, "No such file or directory", "/receipts/o-1")
    )
    assert runs == [1]
    assert_same(first, again)
    assert str(again) == "[Errno 2] No such file or directory: '/receipts/o-1'"
    assert isinstance(again, OSError)
    assert (again.errno, again.strerror, again.filename) == (
        2,
        "No such file or directory",
        "/receipts/o-1",
    )


def test_b28_replay_keeps_slot_attributes(store: Store) -> None:
    """Attributes kept in `__slots__` (its class's and its bases', a private one too) replay
    with the plain ones; before, only `vars()` was stored and `.code` was missing."""
    first, again, runs = first_and_replay(store, lambda: SlottedDeclinedError("05"))
    assert runs == [1]
    assert_same(first, again)
    assert isinstance(again, SlottedDeclinedError)
    assert (again.code, again.gateway, again.attempt, again.reason) == (
        "05",
        "acquirer",
        2,
        "do not honor",
    )


def test_b28_attribute_that_cannot_be_stored_is_left_out(store: Store) -> None:
    """An attribute JSON cannot hold is left out of the replay; the others come back."""
    first, again, runs = first_and_replay(store, lambda: LockLostError("worker-2"))
    assert runs == [1]
    assert_same(first, again)
    assert isinstance(again, LockLostError)
    assert again.holder == "worker-2"
    assert not hasattr(again, "handle")


def test_b28_a_message_formatted_from_what_could_not_be_stored_is_the_firsts(
    store: Store,
) -> None:
    """An exception whose `__str__` reads an attribute JSON cannot hold (the gateway's
    response) replays with the first's message, still an instance of its class (before:
    `str()` of the replay raised AttributeError)."""
    first, again, runs = first_and_replay(store, lambda: DeclinedByGatewayError(GatewayResponse()))
    assert runs == [1]
    assert isinstance(again, DeclinedByGatewayError)
    assert str(again) == str(first) == "declined: insufficient funds"
    assert not hasattr(again, "response")


def test_b28_args_that_cannot_be_stored_replay_as_the_message(store: Store) -> None:
    """Args JSON cannot hold replay as the message alone, without running __init__ on it."""
    INITS.clear()
    first, again, runs = first_and_replay(store, lambda: ResourceError(Handle()))
    assert runs == [1]
    assert INITS == ["ResourceError"]
    assert type(again) is ResourceError
    assert again.args == ("handle db-1",)
    assert str(again) == str(first) == "handle db-1"


def test_b28_a_listed_exception_group_replays_with_what_it_held(store: Store) -> None:
    """`ExceptionGroup` itself listed as final: it replays as a group of the same message and
    sub-exceptions, whatever they are (each rebuilt as a final exception is)."""
    group = ExceptionGroup("several failures", [ValueError("a"), KeyError("b")])
    first, again, runs = first_and_replay(store, lambda: group)
    assert runs == [1]
    assert first is group
    assert isinstance(again, ExceptionGroup)
    assert str(again) == "several failures (2 sub-exceptions)"
    assert [(type(e), e.args) for e in again.exceptions] == [
        (ValueError, ("a",)),
        (KeyError, ("b",)),
    ]
    assert again.__notes__ == ["retrysafe: replayed from the first call with this key."]


def test_b28_a_group_of_final_exceptions_is_final_and_replays_whole(store: Store) -> None:
    """A group whose every sub-exception is final (as `except*` would match it; a TaskGroup in
    the function makes one) is stored and replayed, nested groups and attributes too, though
    `ExceptionGroup` is not listed. Before, it released the key and the retry ran again."""
    finals = (CardDeclinedError, QuotaError)
    runs: list[int] = []

    @idempotent(store, key="k", namespace="grouped", final_exceptions=finals)
    def call(k: str) -> None:
        runs.append(1)
        inner = ExceptionGroup("quota", [QuotaError(limit=3)])
        raise ExceptionGroup("charges", [CardDeclinedError(402), inner])

    raised: list[ExceptionGroup[Exception]] = []
    for _ in range(2):
        with pytest.raises(ExceptionGroup) as caught:
            call("k")
        raised.append(caught.value)
    first, again = raised
    assert runs == [1]
    assert str(again) == str(first) == "charges (2 sub-exceptions)"
    declined, inner = again.exceptions
    assert isinstance(declined, CardDeclinedError)
    assert (declined.code, str(declined)) == (402, "card declined (402): insufficient funds")
    assert isinstance(inner, ExceptionGroup)
    (quota,) = inner.exceptions
    assert isinstance(quota, QuotaError)
    assert quota.limit == 3


def test_b28_a_group_holding_a_transient_exception_releases_the_key(store: Store) -> None:
    """A group with one sub-exception that is not final is not final: the key is released
    and the retry runs again (B28)."""
    runs: list[int] = []

    @idempotent(store, key="k", namespace="grouped", final_exceptions=(CardDeclinedError,))
    def call(k: str) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise ExceptionGroup("charges", [CardDeclinedError(402), ConnectionError("reset")])
        return "charged"

    with pytest.raises(ExceptionGroup):
        call("k")
    assert call("k") == "charged"
    assert runs == [1, 1]


def test_b28_a_group_whose_exception_is_no_longer_final_replays_as_outcome_error(
    store: Store,
) -> None:
    """A stored group holding an exception whose type is no longer final where it is replayed:
    `OutcomeError` naming the group and the exception in it."""

    @idempotent(store, key="k", namespace="grouped", final_exceptions=(CardDeclinedError,))
    def first(k: str) -> None:
        raise ExceptionGroup("charges", [CardDeclinedError(402)])

    @idempotent(store, key="k", namespace="grouped", final_exceptions=(QuotaError,))
    def second(k: str) -> None: ...

    with pytest.raises(ExceptionGroup):
        first("k")
    with pytest.raises(OutcomeError) as caught:
        second("k")
    assert str(caught.value).startswith(
        "The first call of grouped raised builtins:ExceptionGroup (charges), which cannot be "
        "rebuilt on replay: the tests.functions.test_replayed_exceptions:CardDeclinedError "
        "(card declined (402): insufficient funds) in it is no longer a final exception type"
    )


def test_b28_a_group_nested_past_any_recursion_limit_is_raised_as_it_was(store: Store) -> None:
    """A group nested deeper than an interpreter can look into (32 levels is the most judged)
    is not final, on every Python: the call raises it unchanged (not a `RecursionError` from
    judging or storing it) and the retry runs again."""
    runs: list[int] = []

    def nested() -> BaseException:
        group: BaseException = CardDeclinedError(402)
        for depth in range(sys.getrecursionlimit() + 100):
            group = ExceptionGroup(f"level {depth}", [group])
        return group

    deep = nested()

    @idempotent(store, key="k", namespace="grouped", final_exceptions=(CardDeclinedError,))
    def call(k: str) -> None:
        runs.append(1)
        raise deep

    for _ in range(2):
        with pytest.raises(ExceptionGroup) as caught:
            call("k")
        assert caught.value is deep
    assert runs == [1, 1]


def test_b28_a_task_groups_final_exceptions_replay(store_url: str, clock: ManualClock) -> None:
    """An async function whose `asyncio.TaskGroup` fails with final exceptions: the group it
    raises is stored and replayed, and the function does not run again. (On a loop of its own:
    anyio 4.4's pytest runner, the floor's, hangs tearing down a fixture after a task group
    cancelled and uncancelled its task; the product does not.)"""
    runs: list[int] = []

    async def decline(code: int) -> None:
        raise CardDeclinedError(code)

    async def main() -> list[list[int]]:
        astore = open_async_store(store_url, clock=clock)

        @idempotent(astore, key="k", namespace="grouped", final_exceptions=(CardDeclinedError,))
        async def call(k: str) -> None:
            runs.append(1)
            async with asyncio.TaskGroup() as group:
                group.create_task(decline(402))
                group.create_task(decline(403))

        codes = []
        try:
            for _ in range(2):
                with pytest.raises(ExceptionGroup) as caught:
                    await call("k")
                codes.append(sorted(e.code for e in caught.value.exceptions))  # type: ignore[attr-defined]
        finally:
            await astore.aclose()
        return codes

    assert asyncio.run(main()) == [[402, 403], [402, 403]]
    assert runs == [1]


def legacy_outcome(cls: type[BaseException], args: list[Any], message: str) -> bytes:
    """Return a final exception's outcome as the previous release stored it (no attributes)."""
    payload = {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "args": {"$rs": "tuple", "v": args},
        "message": message,
    }
    return b"E" + json.dumps(payload, separators=(",", ":")).encode()


def store_as_previous_release(store: Store, record: Record, first: BaseException) -> None:
    """Rewrite `record`, expired, with `first` stored as the previous release stored it."""
    claim = store.claim(record.identity, record.fingerprint, lease=30, retention=86_400)
    assert claim.acquired
    outcome = legacy_outcome(type(first), list(first.args), str(first))
    store.complete(record.identity, claim.token, outcome, retention=86_400)


class OrderLockedError(Exception):
    """An __init__ that takes its args back: the previous release's replay was right."""

    def __init__(self, order: str) -> None:
        super().__init__(order)
        self.order = order


def test_b39_exception_stored_by_the_previous_release_replays(
    store: Store, clock: ManualClock
) -> None:
    """An outcome stored without attributes replays by __init__ if it takes the args, else as is."""
    finals = (CardDeclinedError, OrderLockedError)
    runs: list[int] = []

    @idempotent(store, key="k", namespace="replayed", final_exceptions=finals)
    def call(k: str) -> None:
        runs.append(1)
        raise OrderLockedError("o-1") if k == "locked" else CardDeclinedError(402)

    stored: dict[str, BaseException] = {}
    for key in ("locked", "declined"):
        with pytest.raises(Exception) as caught:  # noqa: PT011 - asserted below
            call(key)
        stored[key] = caught.value
    records = store.list_records(namespace="replayed")
    clock.advance(86_400 + 1)  # past retention: each record is taken over and rewritten
    for record in records:
        store_as_previous_release(store, record, stored[record.identity.key])

    with pytest.raises(OrderLockedError) as locked:
        call("locked")
    assert_same(stored["locked"], locked.value)
    assert locked.value.order == "o-1"  # its __init__ ran, as the previous release did
    with pytest.raises(CardDeclinedError) as declined:
        call("declined")
    assert_same(stored["declined"], declined.value)
    assert not hasattr(declined.value, "code")  # never stored; its __init__ would get it wrong
    assert runs == [1, 1]
