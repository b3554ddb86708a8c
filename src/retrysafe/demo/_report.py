"""What a demo run found, as a side-by-side table for people and as JSON for scripts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["DemoReport", "RunResult"]


@dataclass(frozen=True, slots=True)
class RunResult:
    """One pass of the demo: the same payments, sent either without keys or with them.

    The charges come from the API's own payments table, counted after the pass; the replays
    and 409s from what the API answered; the retries and lost responses from the client and
    the faulty hop.

    Attributes:
        keys: whether the client's requests carried Idempotency-Keys.
        tenant: the tenant (bearer token) the pass paid as; its rows are in the payments table.
        intended: the logical payments the client meant to make.
        charges: the payments the API stored.
        duplicate_charges: charges beyond the first for one intended payment.
        uncharged: intended payments with no charge at all (the client gave up on them).
        replays: responses the API served from a stored outcome.
        conflicts: 409 responses (a duplicate arrived while the first was in flight).
        retries: attempts the client made beyond the first of each request.
        lost_responses: responses the faulty hop dropped after the API had answered.
        concurrent_duplicates: payments the client sent twice at once (a double click).
        seconds: the wall-clock time of the pass.
    """

    keys: bool
    tenant: str
    intended: int
    charges: int
    duplicate_charges: int
    uncharged: int
    replays: int
    conflicts: int
    retries: int
    lost_responses: int
    concurrent_duplicates: int
    seconds: float

    @property
    def label(self) -> str:
        """`with keys` or `without keys`."""
        return "with keys" if self.keys else "without keys"


@dataclass(frozen=True, slots=True)
class DemoReport:
    """Both passes of one demo run and the settings that produced them.

    Attributes:
        requests: the logical payments per pass.
        loss: the share of responses the faulty hop dropped.
        seed: the seed of every random choice, to run the same faults again.
        store: the store the API used (a description, never a password).
        without_keys: the pass without Idempotency-Keys.
        with_keys: the pass with them.
    """

    requests: int
    loss: float
    seed: int
    store: str
    without_keys: RunResult
    with_keys: RunResult

    @property
    def ok(self) -> bool:
        """Whether the pass with keys charged no payment twice (the demo's exit status)."""
        return self.with_keys.duplicate_charges == 0

    def as_json(self) -> dict[str, object]:
        """Return the report as JSON-ready data."""
        runs = {}
        for result in (self.without_keys, self.with_keys):
            data = asdict(result)
            data["seconds"] = round(result.seconds, 3)
            runs[result.label.replace(" ", "_")] = data
        return {
            "requests": self.requests,
            "loss": self.loss,
            "seed": self.seed,
            "store": self.store,
            "ok": self.ok,
            "runs": runs,
        }

    def render(self) -> RenderableType:
        """Return the side-by-side table and the verdict, for a rich console."""
        without, with_ = self.without_keys, self.with_keys
        heading = Text(
            f"{self.requests} payments through a hop that loses {self.loss:.0%} of responses "
            f"(seed {self.seed}, store: {self.store})",
            style="bold",
        )
        table = Table()
        table.add_column("")
        table.add_column("without keys", justify="right")
        table.add_column("with keys", justify="right")
        rows: list[tuple[str, int | str, int | str]] = [
            ("payments intended", without.intended, with_.intended),
            ("charges made", without.charges, with_.charges),
        ]
        for name, a, b in rows:
            table.add_row(name, str(a), str(b))
        table.add_row(
            "duplicate charges",
            _flag(without.duplicate_charges),
            _flag(with_.duplicate_charges),
        )
        if without.uncharged or with_.uncharged:
            table.add_row("payments never charged", str(without.uncharged), str(with_.uncharged))
        for name, first, second in (
            ("replays served", without.replays, with_.replays),
            ("409s (in flight)", without.conflicts, with_.conflicts),
            ("retries", without.retries, with_.retries),
            ("responses lost", without.lost_responses, with_.lost_responses),
            ("sent twice at once", without.concurrent_duplicates, with_.concurrent_duplicates),
        ):
            table.add_row(name, str(first), str(second))
        table.add_row("time taken", f"{without.seconds:.1f} s", f"{with_.seconds:.1f} s")
        return Group(heading, table, self._verdict())

    def _verdict(self) -> Text:
        with_ = self.with_keys
        if not self.ok:
            return Text(
                f"FAILED: with keys, {with_.duplicate_charges} payment(s) were charged twice.",
                style="bold red",
            )
        lines = [
            f"Without keys, {self.without_keys.duplicate_charges} extra charge(s): every retry "
            "after a lost response, and every second click, ran the payment again.",
            f"With keys, {with_.charges} charge(s) for {with_.intended} intended payment(s): "
            "no duplicates. Retries got the stored response instead of a second charge.",
        ]
        if with_.uncharged:
            lines.append(
                f"{with_.uncharged} payment(s) were never charged: the client ran out of "
                "attempts before an answer got through (try a lower --loss)."
            )
        return Text("\n".join(lines), style="bold green")


def _flag(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "bold green")
