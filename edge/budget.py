"""A fixed-window budget of records: at most ``limit`` in every ``window_s`` seconds.

The device's event stream (``EVT``) never evicts, so what an outside sender can make the device
record is bounded: refused commands (the command router), policy denials (the policy point) and
the safety envelope's refusals each spend a budget, and what is over it is answered and counted,
not recorded. One budget instance per concern; its ``over`` count goes into that concern's status.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RecordBudget"]


class RecordBudget:
    """``take()`` is true for at most ``limit`` calls in each window of ``window_s`` seconds (a
    window starts at the first call after the previous one ended); every false is counted in
    ``over`` (and in ``over_in_window``, so a caller can log the first one of a window)."""

    def __init__(self, limit: int, window_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.over = 0
        self._start: float | None = None
        self._used = 0
        self.over_in_window = 0

    def take(self) -> bool:
        now = self.clock()
        if self._start is None or now - self._start >= self.window_s:
            self._start, self._used, self.over_in_window = now, 0, 0
        if self._used >= self.limit:
            self.over += 1
            self.over_in_window += 1
            return False
        self._used += 1
        return True

    def reset(self) -> None:
        """End the current window now (the next ``take`` starts a new one)."""
        self._start = None
