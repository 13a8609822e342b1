"""The rolling windows behind a snapshot: every `TICK_S`, each session's busy time into a ring, the
process's CPU time and the introspection threads' own, and (every second) RSS. Written by the watchdog
thread; read by snapshots from any thread."""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from openrtc.introspection import timing
from openrtc.introspection.timing import SessionStats

if TYPE_CHECKING:
    from openrtc.runtime.session import Session

TICK_S = 0.5
"""Period of the rolling-window bookkeeping."""
WINDOW_S = 5.0
"""Span of `cpu_pct`, `loop_lag_ms`, `sample_hz_achieved`, `cost_pct`."""
RING = int(WINDOW_S / TICK_S) + 1


def _thread_cpu_s(ident: int) -> float:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError):  # the thread ended, or the platform has no per-thread clocks
        return 0.0


class Windows:
    """The tick ring and what it holds."""

    def __init__(
        self,
        sessions: Callable[[], list[Session]],
        read_rss_mb: Callable[[], float],
        on_rss: Callable[[float], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._read_rss_mb = read_rss_mb
        self._on_rss = on_rss
        self._other_threads: Callable[[], list[int]] = list
        self.tick_times: list[float] = [0.0] * RING
        self.tick_cpu: list[float] = [0.0] * RING
        self.tick_self_cpu: list[float] = [0.0] * RING
        self.tick_index = 0
        self.ticks = 0
        self.rss_mb = 0.0
        self._rss_at = 0.0
        self.share_peaks: list[tuple[float, float]] = []
        """The peak of the equal memory share since any time: (mono, share), shares strictly decreasing."""

    def start(self, other_threads: Callable[[], list[int]]) -> None:
        """`other_threads` names the threads (besides the watchdog) whose CPU counts as our cost."""
        self._other_threads = other_threads
        now, cpu = time.perf_counter(), os.times()
        self.tick_times[:] = [now] * RING
        self.tick_cpu[:] = [cpu.user + cpu.system] * RING

    def tick(self) -> None:
        """On the watchdog thread."""
        i = self.tick_index = (self.tick_index + 1) % RING
        self.tick_self_cpu[i] = time.thread_time() + sum(map(_thread_cpu_s, self._other_threads()))
        sessions = self._sessions()
        # The time and the counters are read together, with nothing between them that lets go of the
        # GIL: a time read before a wait for the GIL (seconds, for a thread a saturated loop starves)
        # would put the busy time of the wait outside the window and read every share low.
        now = time.perf_counter()
        cpu = os.times()
        self.tick_cpu[i] = cpu.user + cpu.system
        passes = timing.NATIVE_PASSES
        if passes is not None:
            passes.tick(sessions, i, RING)  # the loop below, in C: a tenth of its time at 10,000 sessions
        else:
            for session in sessions:
                stats: SessionStats | None = session.stats
                if stats is None:
                    continue
                ring = stats.cpu_ring
                if ring is None:
                    ring = [0.0] * RING
                ring[i] = stats.busy_s
                stats.cpu_ring = ring  # the C timer's stats hand out a copy of theirs
        self.tick_times[i] = now
        self.ticks += 1
        if now - self._rss_at >= 1.0:
            self._rss_at = now
            self.rss_mb = self._read_rss_mb()
            if self._on_rss is not None:
                self._on_rss(self.rss_mb)
            if sessions:
                self._note_share(now, self.rss_mb / len(sessions))

    def _note_share(self, now: float, share: float) -> None:
        peaks = self.share_peaks
        while peaks and peaks[-1][1] <= share:
            peaks.pop()
        peaks.append((now, share))

    def window(self) -> tuple[int, float]:
        """(oldest ring index, span in seconds from that tick to now) of the rolling window.

        Ticks come every `TICK_S` and the ring holds `WINDOW_S / TICK_S + 1` of them, so once warm the
        span is between `WINDOW_S` and `WINDOW_S + TICK_S`; just after start it is shorter.
        """
        oldest = (self.tick_index + 1) % RING if self.ticks >= RING else 1
        return oldest, max(1e-9, time.perf_counter() - self.tick_times[oldest])

    def peak_share_since(self, since_mono: float, current: float) -> float:
        """Largest equal share recorded at or after `since_mono` (or `current` if larger)."""
        peaks = self.share_peaks
        i = bisect.bisect_left(peaks, since_mono, key=lambda p: p[0])
        return max(current, peaks[i][1]) if i < len(peaks) else current
