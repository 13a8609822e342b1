"""The monitor: one loop's introspection, a thin facade over its parts.

- `watchdog`: a thread that looks at the loop when a step would cross the threshold, and records each
  long step as a block (the session's, or nobody's);
- `heartbeat`: a loop timer whose lateness is the loop lag; a late beat no long step explains is an
  overload or code outside any session;
- `gcwatch`: garbage collections on the loop thread, taken out of the steps they fell in;
- `windows`: the rolling windows behind a snapshot (busy time per session, CPU, RSS).

They share the step clock (`timing`), on which each step publishes itself, and the list of blocks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from openrtc.introspection import timing
from openrtc.introspection.gcwatch import GcWatch
from openrtc.introspection.heartbeat import Heartbeat
from openrtc.introspection.schema import Block
from openrtc.introspection.timing import StepClock, TimedCoroutine
from openrtc.introspection.watchdog import Watchdog
from openrtc.introspection.windows import Windows

if TYPE_CHECKING:
    from openrtc.runtime.session import Session

log = logging.getLogger("openrtc.slow")

SLOW_FOR_S = 5.0
"""How long a session stays `slow` after a block."""
MAX_BLOCKS = 100
"""Blocks kept per worker."""


class Monitor:
    """Owns the step clock, the watchdog thread, the heartbeat, the gc watch and the windows."""

    def __init__(
        self,
        threshold_ms: float,
        sessions: Callable[[], list[Session]],
        own_dirs: Callable[[str], tuple[str, ...]],
        read_rss_mb: Callable[[], float],
        on_rss: Callable[[float], None] | None = None,
    ) -> None:
        self.threshold_s = threshold_ms / 1000
        self.timer = timing.ACTIVE
        """The step timer implementation: read when the monitor is made, so tests can choose it."""
        self.clock: StepClock = self.timer.clock(self.threshold_s, self._on_long_step)
        self.blocks: collections.deque[Block] = collections.deque(maxlen=MAX_BLOCKS)
        self.errors = 0
        self.last_error: str | None = None
        self.gc = GcWatch(self.threshold_s, self.blocks)
        self.windows = Windows(sessions, read_rss_mb, on_rss)
        self.heartbeat = Heartbeat(self.threshold_s, self.clock, self.blocks, self.gc)
        self.watchdog = Watchdog(
            self.threshold_s,
            self.clock,
            own_dirs,
            self.blocks,
            self.gc,
            self.windows,
            self.heartbeat,
            self.record_error,
        )
        self.add_starving(self.watchdog.starves)

    def start(self, loop: asyncio.AbstractEventLoop, other_threads: Callable[[], list[int]] = list) -> None:
        """Start on the loop's thread; `other_threads` names threads whose CPU counts as our cost."""
        self.windows.start(other_threads)
        self.heartbeat.start(loop)
        self.gc.start()
        self.watchdog.start()

    def close(self) -> None:
        self.gc.close()
        self.heartbeat.close()
        self.watchdog.close()

    def record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    def _on_long_step(self, step: TimedCoroutine, start: float, own: float) -> None:
        """The clock's callback: a session step held the loop past the threshold (on the loop thread)."""
        try:
            self.watchdog.note_long_step(step, start, own)
        except Exception as exc:
            # Raised here, it would come out of the session's own step and fail its task.
            self.record_error(f"long step: {type(exc).__name__}: {exc}")
            log.exception("introspection failed to record a long step")

    # -- what a snapshot reads --------------------------------------------------------------------

    def add_starving(self, starves: Callable[[], bool]) -> None:
        """`starves` (called on the loop thread) is true while another thread waits for the GIL: the
        heartbeat then lends it a few slices (see `Heartbeat._hand_over_gil`)."""
        self.heartbeat.starving.append(starves)

    @property
    def sample_hz_target(self) -> float:
        return self.watchdog.sample_hz_target

    def ongoing(self) -> Block | None:
        return self.watchdog.ongoing()

    def window(self) -> tuple[int, float]:
        return self.windows.window()

    def peak_share_since(self, since_mono: float, current: float) -> float:
        return self.windows.peak_share_since(since_mono, current)
