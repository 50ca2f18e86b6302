"""The one restart policy of every supervisor (drivers, agents, sandbox components, nats-server).

:class:`Backoff` doubles a delay from ``initial_s`` up to ``max_s`` on each failure and starts
over once the supervised thing has run ``stable_after_s`` without failing.

Example
    backoff = Backoff(0.5, 30.0, stable_after_s=10.0)
    while True:
        started = time.monotonic()
        await run()                       # returns or raises when it fails
        await asyncio.sleep(backoff.next(ran_s=time.monotonic() - started))
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Growth of the delay per failure.
FACTOR = 2.0


@dataclass
class Backoff:
    """Exponential restart delay: ``initial_s``, doubled per failure, capped at ``max_s``."""

    initial_s: float
    max_s: float
    stable_after_s: float = float("inf")  # a run this long resets the delay
    failures: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` earlier failures (0 = the first): for supervisors that
        count failures themselves (the sandbox counts those within a window)."""
        return min(self.initial_s * FACTOR ** max(0, failures), self.max_s)

    def next(self, ran_s: float = 0.0) -> float:
        """The delay before the next restart, after a run of ``ran_s`` seconds that failed."""
        if ran_s >= self.stable_after_s:
            self.failures = 0
        delay = self.delay(self.failures)
        self.failures += 1
        return delay

    def peek(self) -> float:
        """The delay :meth:`next` would give now (without counting a failure)."""
        return self.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
