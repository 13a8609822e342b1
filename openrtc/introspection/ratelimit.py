"""Saying a repeated thing at a bounded rate: one line per period, with how many were held back."""

from __future__ import annotations

import time
from collections.abc import Callable


class Every:
    """Lets one event of a kind through per `period_s`, counting the ones held back."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self._period = period_s
        self._clock = clock
        self._last = -period_s
        self._held = 0

    def due(self) -> int | None:
        """None when this one is held back; else how many were held back since the last one let through."""
        now = self._clock()
        if now - self._last < self._period:
            self._held += 1
            return None
        held, self._last, self._held = self._held, now, 0
        return held
