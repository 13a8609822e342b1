"""The heartbeat: a loop timer every `HEARTBEAT_S`, whose lateness is the loop lag. A late heartbeat
with no long step behind it is an overload (many short steps) or code outside any session, blamed on
no session. While another introspection thread (the watchdog, the socket server) starves for the GIL,
the heartbeat also lends it a few slices."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

from openrtc.introspection.gcwatch import GcWatch
from openrtc.introspection.ratelimit import Every
from openrtc.introspection.schema import Block
from openrtc.introspection.timing import StepClock
from openrtc.introspection.windows import WINDOW_S

if TYPE_CHECKING:
    from openrtc.introspection.watchdog import Capture

log = logging.getLogger("openrtc.slow")

HEARTBEAT_S = 0.05
"""Period of the loop's heartbeat timer."""
HANDOVER_SLICE_S = 0.0005
HANDOVER_MAX_S = 0.03
"""At most this much loop time per heartbeat goes to letting a starved thread of ours run."""
OVERLOAD_LOG_EVERY_S = 5.0
"""A loop that stays overloaded is late at every heartbeat: log it at most this often (each late
heartbeat is still a block in the snapshot)."""


class Heartbeat:
    """The loop's heartbeat timer (on the loop thread)."""

    def __init__(
        self, threshold_s: float, clock: StepClock, blocks: collections.deque[Block], gc: GcWatch
    ) -> None:
        self._threshold_s = threshold_s
        self._clock = clock
        self._blocks = blocks
        self._gc = gc
        self.last_beat = perf_counter()
        self._expected = 0.0
        self._beat_long_steps = 0
        self.lags_ms: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=int(WINDOW_S / HEARTBEAT_S)
        )
        """(perf_counter, lateness in ms) of each beat over the window."""
        self.outside: Capture | None = None
        """What the watchdog saw holding the loop outside any session since the last beat."""
        self.starving: list[Callable[[], bool]] = []
        """One test per thread of ours that can starve for the GIL: true while it waits for it."""
        self.handovers = 0
        self._overload_log = Every(OVERLOAD_LOG_EVERY_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.last_beat = perf_counter()
        self._schedule()

    def close(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = perf_counter() + HEARTBEAT_S
        self._timer = self._loop.call_at(self._loop.time() + HEARTBEAT_S, self._beat)

    def _beat(self) -> None:
        now = perf_counter()
        late = max(0.0, now - self._expected)
        self.lags_ms.append((now, late * 1000))
        clock = self._clock
        late -= self._gc.within(self.last_beat, now)  # reported by the gc callback already
        if late > self._threshold_s and clock.long_steps == self._beat_long_steps:
            # No long step explains the delay: code outside any session if no session step even
            # started meanwhile, else many short steps (overload).
            self._record_unblamed(late, outside=clock.started < self.last_beat)
        self._beat_long_steps = clock.long_steps
        self.last_beat = now
        self.outside = None
        if self._someone_starves():
            self._hand_over_gil()
        if not self._stopped:
            self._schedule()

    def _someone_starves(self) -> bool:
        return any(starves() for starves in self.starving)

    def _hand_over_gil(self) -> None:
        # A loop saturated with short steps releases the GIL for an instant at every `select` and
        # takes it straight back: a waiting thread never times out into a drop request and can
        # starve for seconds (a GIL convoy). Sleep in short slices: each releases the GIL for a whole
        # slice, so the starved thread takes it and gets on; the loop pays at most HANDOVER_MAX_S
        # per heartbeat, and only while someone starves.
        deadline = time.perf_counter() + HANDOVER_MAX_S
        while self._someone_starves() and time.perf_counter() < deadline:
            time.sleep(HANDOVER_SLICE_S)
        self.handovers += 1

    def _record_unblamed(self, late: float, outside: bool) -> None:
        capture = self.outside
        at = time.time() - late
        if outside and capture is not None:
            where = capture.blame_text()
            block = Block(
                None, None, round(late * 1000, 1), at, where, capture.stack_text(), False, "outside"
            )
            log.warning(
                "[slow-loop] code outside any session blocked event loop for %.0fms at %s", late * 1000, where
            )
        else:
            where = f"overload: loop {late * 1000:.0f} ms late, no single step over the threshold"
            block = Block(None, None, round(late * 1000, 1), at, where, [], False, "overload")
            more = self._overload_log.due()
            if more is not None:
                since = f" ({more} more late heartbeats since the last such line)" if more else ""
                log.warning("[overload] event loop %.0fms late: %s%s", late * 1000, where, since)
        self._blocks.append(block)
