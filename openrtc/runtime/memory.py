"""Memory guard: turns RSS readings into warn/limit crossings. Pure state machine; the reading is injected."""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class MemoryEvent(enum.Enum):
    """A crossing of a threshold, reported once per crossing."""

    WARN_ABOVE = "warn_above"
    WARN_BELOW = "warn_below"
    LIMIT_ABOVE = "limit_above"
    LIMIT_BELOW = "limit_below"


@dataclass(frozen=True)
class MemoryThresholds:
    """Worker-wide memory thresholds in MB of RSS; None disables one."""

    warn_mb: float | None = None
    """Above this, one warning per crossing."""
    limit_mb: float | None = None
    """Above this, new sessions are refused until RSS falls back below it."""


class MemoryGuard:
    """Tracks which side of each threshold the worker is on. Safe to call from any thread."""

    def __init__(self, thresholds: MemoryThresholds, read_rss_mb: Callable[[], float]) -> None:
        self.thresholds = thresholds
        self._read = read_rss_mb
        self._lock = threading.Lock()
        self._above_warn = False
        self._above_limit = False
        self.last_rss_mb = 0.0

    @property
    def enabled(self) -> bool:
        return self.thresholds.warn_mb is not None or self.thresholds.limit_mb is not None

    @property
    def above_limit(self) -> bool:
        return self._above_limit

    def poll(self) -> list[MemoryEvent]:
        """Read RSS once and return the crossings since the last reading."""
        return self.observe(self._read())

    def observe(self, rss: float) -> list[MemoryEvent]:
        """Take an RSS reading made elsewhere and return the crossings since the last reading."""
        events: list[MemoryEvent] = []
        with self._lock:
            self.last_rss_mb = rss
            warn, limit = self.thresholds.warn_mb, self.thresholds.limit_mb
            if warn is not None and (rss > warn) != self._above_warn:
                self._above_warn = rss > warn
                events.append(MemoryEvent.WARN_ABOVE if self._above_warn else MemoryEvent.WARN_BELOW)
            if limit is not None and (rss > limit) != self._above_limit:
                self._above_limit = rss > limit
                events.append(MemoryEvent.LIMIT_ABOVE if self._above_limit else MemoryEvent.LIMIT_BELOW)
        return events


@functools.lru_cache(maxsize=1)
def _this_process() -> Any:
    import psutil

    return psutil.Process()


def process_rss_mb() -> float:
    """This process's resident set size in MB (one cheap /proc read on Linux)."""
    return float(_this_process().memory_info().rss) / (1024 * 1024)
