"""What the client tells observers: one `retrysafe.observe.Attempt` per request it sends.

The retry loop learns an attempt's fate in two steps: its outcome first (a response status or
an error, in tenacity's `retry` callback), then whether another attempt follows and after what
delay (`before_sleep`), or that none does (the outcome is returned, or retries are over).
`AttemptLog` holds the outcome until the second step, then tells the observers, whose
exceptions are logged and otherwise ignored, as on every other face.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from retrysafe._clock import Clock
from retrysafe._errors import NotReplayableError
from retrysafe._flow.observing import Observation
from retrysafe.observe import Attempt, Observer

__all__ = ["FACE", "AttemptLog", "observation"]

FACE: Final = "client"
"""The name the client's observers are held under (not a face of `retrysafe.observe.FACES`:
attempts are reported to `Observer.attempted`, never as operations)."""


def observation(observers: Sequence[Observer]) -> Observation:
    """The client's observers, told as every face tells its own."""
    return Observation(FACE, observers)


class AttemptLog:
    """The attempts of one logical request, each told to the observers once its fate is known.

    Args:
        observation: who to tell (nothing is timed or told when it has no observers).
        clock: what times each attempt (the call's clock).
        method: the request method.
        key: the Idempotency-Key every attempt carries, or None.
    """

    __slots__ = ("_began", "_clock", "_ended", "_observation", "key", "method", "number")

    def __init__(
        self, observation: Observation, clock: Clock, method: str, key: str | None
    ) -> None:
        self._observation = observation
        self._clock = clock
        self.method = method
        self.key = key or ""
        self.number = 0
        """How many attempts have begun."""
        self._began = 0.0
        self._ended: tuple[int | None, str | None, float] | None = None

    def begin(self) -> None:
        """Count an attempt that is being sent now."""
        self.number += 1
        if self._observation:
            self._began = self._clock.now()
            self._ended = None

    def end(self, status: int | None, error: BaseException | None) -> None:
        """Note how the attempt ended: a response with `status`, or `error` without one."""
        if not self._observation:
            return
        if isinstance(error, NotReplayableError) and error.__cause__ is not None:
            error = error.__cause__  # what failed on the wire, not why it was not retried
        name = None if error is None else type(error).__name__
        self._ended = (status, name, self._clock.now() - self._began)

    def tell(self, retry_in: float | None) -> None:
        """Tell the observers about the attempt that ended; `retry_in` None: it is the last."""
        if self._ended is None:
            return
        status, error, seconds = self._ended
        self._ended = None
        attempt = Attempt(self.method, self.key, self.number, status, error, seconds, retry_in)
        self._observation.tell("attempted", attempt)

    def last(self, status: int | None, error: BaseException | None) -> None:
        """Note and tell at once an attempt that is the last (a request sent only once)."""
        self.end(status, error)
        self.tell(None)
